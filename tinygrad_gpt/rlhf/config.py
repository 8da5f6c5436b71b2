"""PPOConfig: every knob of the RLHF loop in one dataclass, each with what it does and its usual value.

Usual values are those of Ziegler et al. 2019 / Stiennon et al. 2020 and TRL's PPOConfig, adjusted
where a 65-character model on a CPU wants something else (said per field). Scripts map argparse
flags onto these fields (examples/rlhf_sentiment.py, benchmarks/rlhf.py).

Deliberately does not: hold model or reward-model settings (GPTConfig and RewardModelConfig do).
"""
from dataclasses import dataclass

from tinygrad_gpt.cli import check_fields, setting


@dataclass
class PPOConfig:
    # ---- rollouts ----
    steps: int = setting(150, ge=1)  # PPO steps (one rollout batch + its optimisation each); the benchmark runs 150
    batch_size: int = setting(64, ge=1)  # prompts (= sampled responses) per step; TRL 256, Ziegler 512; 64 fits a CPU
    prompt_len: int = setting(64, ge=1)  # characters per prompt, a window of the validation split (no padding)
    response_len: int = setting(64, ge=1)  # characters sampled per response
    # divides the logits when sampling AND when recomputing log-probs (one policy)
    temperature: float = setting(1.0, gt=0)
    # response chunk per KV-cache window when P + R > block_size; None = block // 2
    window_stride: int | None = setting(None, ge=1)
    # ---- reward ----
    # KL_t in the reward: "sampled" log pi(a_t) - log q(a_t) (Ziegler, TRL), or "exact" sum over the vocabulary;
    # exact carries no gradient to a_t (advantage.py)
    kl_estimator: str = setting("sampled", choices=("exact", "sampled"))
    # beta in r_t = -beta KL_t (scores normalised to std 1); Ziegler 0.1-0.2, TRL 0.2
    init_kl_coef: float = setting(0.15, ge=0)
    adaptive_kl: bool = True         # adapt beta to keep the KL per sequence near kl_target (Ziegler et al. 2019)
    # wanted mean KL per response in nats (summed over tokens); TRL 6; 5.5 = 0.086/char
    kl_target: float = setting(5.5, gt=0)
    # sequences over which beta can change by ~e at +-20% error; TRL / Ziegler 10000, which moves beta by < 20% in
    # 150 steps of 64: too slow for this run
    kl_horizon: int = setting(1000, ge=1)
    # the scorer's score s enters PPO as sign(s) |s|^p (before normalising); 1 = s itself; 0.5 pays more for turning
    # a neutral completion mildly positive than for making a positive one more so (concave above 0, convex below)
    score_power: float = setting(1.0, gt=0)
    # added to a score above positive_threshold (before normalising): under the KL-regularised objective (pi* ~
    # pi_ref exp(r / beta)) an indicator reward is what buys the most "positive at all" per nat; 0 = off
    positive_bonus: float = setting(0.0, ge=0)
    # VADER's own line for a positive text (compound >= 0.05, its README)
    positive_threshold: float = setting(0.05, ge=-1, le=1)
    norm_batches: int = setting(2, ge=1)  # reference batches sampled to measure the score's mean and std (normaliser)
    # ---- advantages ----
    gamma: float = setting(1.0, ge=0, le=1)  # discount; 1 for text (the episode is 64 tokens, nothing to discount)
    lam: float = setting(1.0, ge=0, le=1)  # GAE lambda; TRL / Ziegler 0.95. 1 here: the score comes at the last of 64
                                     # tokens, and at 0.95 the first token's advantage keeps 0.95^63 = 4% of it,
                                     # the rest left to a value head that starts at zero. Needs kl_loss_coef:
                                     # alone it learned 3x faster, overshot the KL and diverged at step 148
    whiten_advantages: bool = True   # masked whitening of advantages over the batch; always on in practice
    # ---- optimisation ----
    ppo_epochs: int = setting(4, ge=1)  # passes over each rollout batch; TRL 4
    minibatch_size: int = setting(16, ge=1)  # sequences per gradient step; batch_size / minibatch_size steps per epoch
    lr: float = setting(2e-5, gt=0)  # AdamW learning rate; TRL 1.41e-5 (GPT-2); 3e-5 reached the KL limit by step 50
    anneal_lr: bool = False          # lr falls linearly from lr (step 1) to lr / steps (last step), as in Ziegler
                                     # et al.'s lm-human-preferences and OpenAI baselines ppo2; False = constant
    adam_betas: tuple = (0.9, 0.95)  # AdamW betas
    weight_decay: float = setting(0.0, ge=0)  # 0: decay would pull the policy away from the reference for no reason
    max_grad_norm: float = setting(1.0, ge=0)  # global gradient-norm clip; 0 turns it off
    # epsilon of the clipped surrogate, r in [1 - eps, 1 + eps]; 0.2 everywhere
    clip_eps: float = setting(0.2, gt=0, lt=1)
    clip_value: float = setting(0.2, gt=0)  # c of the clipped value loss, V in V_old +- c; TRL 0.2
    # weight of the value loss in the total (the value head shares the trunk); TRL 0.1
    vf_coef: float = setting(0.1, ge=0)
    value_trunk_grad: bool = True    # the value loss trains the GPT trunk too (TRL, Ziegler); False: the head only
    # weight of the exact KL(pi_theta || pi_ref) per token added to the loss (GRPO-style, on top of the KL in the
    # reward); pulls every token's distribution back, not only the sampled one's; 0 = off (TRL). 0.2 with lam 1 gave
    # the most positive completions per nat of KL (benchmarks/RESULTS.md, RLHF)
    kl_loss_coef: float = setting(0.2, ge=0)
    ent_coef: float = setting(0.0, ge=0)  # weight of the entropy bonus (subtracted from the loss); 0 in RLHF usually
    # early stop: no more minibatches this step once the old->new KL per token (k3 estimator) exceeds it; None =
    # never
    target_kl: float | None = setting(0.05, gt=0)
    ratio_threshold: float = setting(10.0, gt=1)  # skip (and log) a minibatch whose mean ratio pi/pi_old exceeds this
    seed: int = setting(0, ge=0)  # rollouts, prompt draws and minibatch shuffles
    device: str = setting("cpu", flag=False)

    def __post_init__(self):
        check_fields(self)
        if self.batch_size % self.minibatch_size:
            raise ValueError(f"PPOConfig: batch_size {self.batch_size} is not a multiple of minibatch_size "
                             f"{self.minibatch_size}")
        if not (len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas)):
            raise ValueError(f"PPOConfig: adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
