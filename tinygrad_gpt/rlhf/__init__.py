"""RLHF on the tinygrad_gpt engine: a GPT tuned by PPO, GRPO, RLOO or DPO on scores given to text after it is written.

config.py        PPOConfig, GRPOConfig, RLOOConfig, DPOConfig: one commented field per knob
policy.py        PolicyWithValue (GPT + zero-initialised value head), frozen_copy, windowed scoring
rollout.py       prompts -> sampled responses (GPT.generate) -> logprobs, reference logprobs, values, KL
scorers.py       VaderScorer (response only, trailing partial word dropped), ScoreNormalizer, shaped_score
advantage.py     KL per token (exact / sampled), shaped rewards, GAE, fixed and adaptive KL controllers
losses.py        PolicyLoss, ValueLoss, Entropy, KLToReference, Whiten, BradleyTerryLoss: forward/backward
                 side by side
reward_model.py  preference pairs labelled by the scorer, RewardModel, Bradley-Terry training, accuracy
trainer.py       RLHFTrainer: what every method shares (prompts, rollouts, normaliser, the update loop,
                 metrics, kept steps and the non-finite check, run() with SIGINT / SIGTERM, saving)
ppo.py           PPOTrainer: rollout, rewards, GAE; its loss (clipped ratio, value, entropy, KL), early stop
grpo.py          group advantages (GRPO, Dr. GRPO), GRPOLoss (clipped ratio + k3 KL), GRPOTrainer
rloo.py          leave-one-out baseline, ReinforceLoss, RLOOTrainer (REINFORCE or clipped)
dpo.py           DPOLoss on scorer-labelled pairs, DPOTrainer (offline or online)
diagnostics.py   per-step health figures (ratio, clip fraction, KL k1/k3, explained variance...) and warnings
evaluate.py      evaluate(): gold score, exact KL to the reference and fluency on a fixed prompt set; the
                 benchmark's targets and its tables (one run; runs by recipe)
run.py           the driver the scripts call: flags, set-up (checkpoint, prompts, reward model), the
                 trainer of an --algo (TRAINERS), metrics lines and progress, before / after summary

Follows: Ziegler et al. 2019 "Fine-Tuning Language Models from Human Preferences", Schulman et al.
2017 (PPO) and 2016 (GAE), Stiennon et al. 2020, Shao et al. 2024 (GRPO), Ahmadian et al. 2024 (RLOO),
Rafailov et al. 2023 (DPO), TRL's trainers. Deliberately does not: run
distributed, support padded batches or end-of-text tokens, or use LoRA / a separate value network.
"""
from tinygrad_gpt.rlhf.advantage import (AdaptiveKLController, FixedKLController, gae, kl_per_token,
                                         shaped_rewards)
from tinygrad_gpt.rlhf.config import ALGOS, CONFIGS, DPOConfig, GRPOConfig, PPOConfig, RLOOConfig
from tinygrad_gpt.rlhf.dpo import DPOLoss, DPOTrainer, dpo_loss
from tinygrad_gpt.rlhf.grpo import GRPOLoss, GRPOTrainer, group_advantages, grpo_loss
from tinygrad_gpt.rlhf.losses import (BradleyTerryLoss, Entropy, KLToReference, PolicyLoss, ValueLoss, Whiten,
                                      bradley_terry_loss, entropy, kl_to_reference, policy_loss, value_loss, whiten)
from tinygrad_gpt.rlhf.policy import PolicyWithValue, frozen_copy, score_windows, token_logprobs
from tinygrad_gpt.rlhf.ppo import PPOTrainer
from tinygrad_gpt.rlhf.reward_model import (PooledScore, PreferencePairs, RewardModel, RewardModelConfig,
                                            WordRewardModel, WordSum, make_preference_pairs, make_reward_model,
                                            pairs_from_groups, pairs_from_responses, pairwise_accuracy,
                                            train_reward_model, vocabulary_of, words_of)
from tinygrad_gpt.rlhf.rloo import ReinforceLoss, RLOOTrainer, leave_one_out_baseline, reinforce_loss, rloo_advantages
from tinygrad_gpt.rlhf.rollout import Rollout, prompt_batches, rollout, sample_responses, score_rollout
from tinygrad_gpt.rlhf.run import TRAINERS
from tinygrad_gpt.rlhf.scorers import ScoreNormalizer, VaderScorer, drop_partial_word, shaped_score, signed_power
