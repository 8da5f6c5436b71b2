"""PPOConfig: every knob of the RLHF loop in one dataclass, each with what it does and its usual value.

Usual values are those of Ziegler et al. 2019 / Stiennon et al. 2020 and TRL's PPOConfig, adjusted
where a 65-character model on a CPU wants something else (said per field). Scripts map argparse
flags onto these fields (examples/rlhf_sentiment.py, benchmarks/rlhf.py).

Deliberately does not: hold model or reward-model settings (GPTConfig and RewardModelConfig do).
"""
from dataclasses import dataclass


@dataclass
class PPOConfig:
    # ---- rollouts ----
    steps: int = 150                 # PPO steps (one rollout batch + its optimisation each); the benchmark runs 150
    batch_size: int = 64             # prompts (= sampled responses) per step; TRL 256, Ziegler 512; 64 fits a CPU
    prompt_len: int = 64             # characters per prompt, a window of the validation split (no padding)
    response_len: int = 64           # characters sampled per response
    temperature: float = 1.0         # divides the logits when sampling AND when recomputing log-probs (one policy)
    window_stride: int | None = None  # response chunk per KV-cache window when P + R > block_size; None = block // 2
    # ---- reward ----
    kl_estimator: str = "sampled"    # KL_t in the reward: "sampled" log pi(a_t) - log q(a_t) (Ziegler, TRL), or "exact"
                                     # sum over the vocabulary; exact carries no gradient to a_t (advantage.py)
    init_kl_coef: float = 0.15       # beta in r_t = -beta KL_t (scores normalised to std 1); Ziegler 0.1-0.2, TRL 0.2
    adaptive_kl: bool = True         # adapt beta to keep the KL per sequence near kl_target (Ziegler et al. 2019)
    kl_target: float = 5.5           # wanted mean KL per response in nats (summed over tokens); TRL 6; 5.5 = 0.086/char
    kl_horizon: int = 1000           # sequences over which beta can change by ~e at +-20% error; TRL / Ziegler 10000,
                                     # which moves beta by < 20% in 150 steps of 64: too slow for this run
    score_power: float = 1.0         # the scorer's score s enters PPO as sign(s) |s|^p (before normalising); 1 = s
                                     # itself; 0.5 pays more for turning a neutral completion mildly positive
                                     # than for making a positive one more so (concave above 0, convex below)
    positive_bonus: float = 0.0      # added to a score above positive_threshold (before normalising): under the
                                     # KL-regularised objective (pi* ~ pi_ref exp(r / beta)) an indicator reward is
                                     # what buys the most "positive at all" per nat; 0 = off
    positive_threshold: float = 0.05  # VADER's own line for a positive text (compound >= 0.05, its README)
    norm_batches: int = 2            # reference batches sampled to measure the score's mean and std (normaliser)
    # ---- advantages ----
    gamma: float = 1.0               # discount; 1 for text (the episode is 64 tokens, nothing to discount)
    lam: float = 1.0                 # GAE lambda; TRL / Ziegler 0.95. 1 here: the score comes at the last of 64
                                     # tokens, and at 0.95 the first token's advantage keeps 0.95^63 = 4% of it,
                                     # the rest left to a value head that starts at zero. Needs kl_loss_coef:
                                     # alone it learned 3x faster, overshot the KL and diverged at step 148
    whiten_advantages: bool = True   # masked whitening of advantages over the batch; always on in practice
    # ---- optimisation ----
    ppo_epochs: int = 4              # passes over each rollout batch; TRL 4
    minibatch_size: int = 16         # sequences per gradient step; batch_size / minibatch_size steps per epoch
    lr: float = 2e-5                 # AdamW learning rate; TRL 1.41e-5 (GPT-2); 3e-5 reached the KL limit by step 50
    anneal_lr: bool = False          # lr falls linearly from lr (step 1) to lr / steps (last step), as in Ziegler
                                     # et al.'s lm-human-preferences and OpenAI baselines ppo2; False = constant
    adam_betas: tuple = (0.9, 0.95)  # AdamW betas
    weight_decay: float = 0.0        # 0: decay would pull the policy away from the reference for no reason
    max_grad_norm: float = 1.0       # global gradient-norm clip; 0 turns it off
    clip_eps: float = 0.2            # epsilon of the clipped surrogate, r in [1 - eps, 1 + eps]; 0.2 everywhere
    clip_value: float = 0.2          # c of the clipped value loss, V in V_old +- c; TRL 0.2
    vf_coef: float = 0.1             # weight of the value loss in the total (the value head shares the trunk); TRL 0.1
    value_trunk_grad: bool = True    # the value loss trains the GPT trunk too (TRL, Ziegler); False: the head only
    kl_loss_coef: float = 0.2        # weight of the exact KL(pi_theta || pi_ref) per token added to the loss (GRPO-
                                     # style, on top of the KL in the reward); pulls every token's distribution
                                     # back, not only the sampled one's; 0 = off (TRL). 0.2 with lam 1 gave the
                                     # most positive completions per nat of KL (benchmarks/RESULTS.md, RLHF)
    ent_coef: float = 0.0            # weight of the entropy bonus (subtracted from the loss); 0 in RLHF usually
    target_kl: float | None = 0.05   # early stop: no more minibatches this step once the old->new KL per token
                                     # (k3 estimator) exceeds it; None = never
    ratio_threshold: float = 10.0    # skip (and log) a minibatch whose mean ratio pi/pi_old exceeds this
    seed: int = 0                    # rollouts, prompt draws and minibatch shuffles
    device: str = "cpu"

    def __post_init__(self):
        for name in ("steps", "batch_size", "prompt_len", "response_len", "ppo_epochs", "minibatch_size",
                     "norm_batches", "kl_horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"PPOConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.minibatch_size:
            raise ValueError(f"PPOConfig: batch_size {self.batch_size} is not a multiple of minibatch_size "
                             f"{self.minibatch_size}")
        if self.kl_estimator not in ("exact", "sampled"):
            raise ValueError(f"PPOConfig: kl_estimator must be 'exact' or 'sampled', got {self.kl_estimator!r}")
        if not self.score_power > 0:
            raise ValueError(f"PPOConfig: score_power must be > 0, got {self.score_power}")
        if self.kl_loss_coef < 0:
            raise ValueError(f"PPOConfig: kl_loss_coef must be >= 0, got {self.kl_loss_coef}")
        if self.positive_bonus < 0:
            raise ValueError(f"PPOConfig: positive_bonus must be >= 0, got {self.positive_bonus}")
        if self.temperature <= 0:
            raise ValueError(f"PPOConfig: temperature must be > 0, got {self.temperature}")
        if self.kl_target <= 0:
            raise ValueError(f"PPOConfig: kl_target must be > 0, got {self.kl_target}")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"PPOConfig: clip_eps must be in (0, 1), got {self.clip_eps}")


# ---- the critic-free methods and DPO -------------------------------------------------------------
# Their field names match PPOConfig's where the knob is the same (steps, batch_size, lr, ...), so the
# trainers' shared code (trainer.py) and the scripts' flags treat every method alike. Defaults give
# every method the same budget as PPO's: 150 steps x 64 generated completions.

ALGOS = ("ppo", "grpo", "rloo", "dpo")


@dataclass
class SampledConfig:
    # ---- rollouts ----
    steps: int = 150                 # steps; each generates batch_size completions and optimises on them
    batch_size: int = 64             # completions generated per step (all methods: PPO's 64)
    prompt_len: int = 64             # characters per prompt, a window of the validation split (no padding)
    response_len: int = 64           # characters sampled per response
    temperature: float = 1.0         # divides the logits when sampling AND when recomputing log-probs
    window_stride: int | None = None  # response chunk per KV-cache window when P + R > block_size; None = block // 2
    # ---- reward (as PPOConfig) ----
    score_power: float = 1.0         # the score enters as sign(s) |s|^p before normalising; 1 = s itself
    positive_bonus: float = 0.0      # added to a score above positive_threshold before normalising; 0 = off
    positive_threshold: float = 0.05  # VADER's own line for a positive text
    norm_batches: int = 2            # reference batches sampled to fit the score normaliser (mean 0, std 1)
    # ---- optimisation ----
    epochs: int = 2                  # passes over each step's batch (PPO's ppo_epochs)
    minibatch_size: int = 16         # sequences (DPO: pairs) per gradient step
    lr: float = 2e-5                 # AdamW learning rate (PPO's)
    adam_betas: tuple = (0.9, 0.95)  # AdamW betas
    weight_decay: float = 0.0        # 0: decay would pull the policy away from the reference for no reason
    max_grad_norm: float = 1.0       # global gradient-norm clip; 0 turns it off
    seed: int = 0                    # rollouts, prompt draws and minibatch shuffles
    device: str = "cpu"

    def _check_common(self, name):
        for field in ("steps", "batch_size", "prompt_len", "response_len", "epochs", "minibatch_size",
                      "norm_batches"):
            if getattr(self, field) < 1:
                raise ValueError(f"{name}: {field} must be >= 1, got {getattr(self, field)}")
        if self.temperature <= 0:
            raise ValueError(f"{name}: temperature must be > 0, got {self.temperature}")
        if not self.score_power > 0:
            raise ValueError(f"{name}: score_power must be > 0, got {self.score_power}")
        if self.positive_bonus < 0:
            raise ValueError(f"{name}: positive_bonus must be >= 0, got {self.positive_bonus}")
        if self.lr <= 0:
            raise ValueError(f"{name}: lr must be > 0, got {self.lr}")


@dataclass
class GRPOConfig(SampledConfig):
    """GRPO (Shao et al. 2024, DeepSeekMath): group-normalised advantages, clipped ratio, KL in the loss."""
    group_size: int = 8              # G responses per prompt; batch_size / G prompts per step (DeepSeekMath 64)
    advantage: str = "grpo"          # "grpo": (s - mean_g) / (std_g + eps), the paper's (default);
                                     # "dr_grpo": s - mean_g (Liu et al. 2025, "Dr. GRPO": no std division,
                                     # which up-weights easy / hard groups, and a constant length normaliser)
    adv_eps: float = 1e-4            # eps in the std division (a group with spread 0 gets advantage 0)
    clip_eps: float = 0.2            # epsilon of the clipped ratio, r in [1 - eps, 1 + eps]
    kl_estimator: str = "k3"         # the KL term of the loss: "k3" exp(q - p) - (q - p) - 1 at the sampled
                                     # token (the paper's, unbiased, >= 0), or "exact" sum over the vocabulary
    init_kl_coef: float = 0.2        # beta of the KL term (DeepSeekMath 0.04 for a far larger, flatter
                                     # vocabulary distribution; adapted below when adaptive_kl)
    adaptive_kl: bool = True         # adapt beta toward kl_target (the same controller and target as PPO's), so
                                     # the methods compare at one KL
    kl_target: float = 5.5           # wanted mean KL per response, nats summed over its tokens (PPO's)
    kl_horizon: int = 1000           # sequences over which beta can change by ~e (PPO's)

    def __post_init__(self):
        self._check_common("GRPOConfig")
        if self.group_size < 2:
            raise ValueError(f"GRPOConfig: group_size must be >= 2 (a group of 1 has no spread), got {self.group_size}")
        if self.batch_size % self.group_size:
            raise ValueError(f"GRPOConfig: batch_size {self.batch_size} is not a multiple of group_size "
                             f"{self.group_size}")
        if self.advantage not in ("grpo", "dr_grpo"):
            raise ValueError(f"GRPOConfig: advantage must be 'grpo' or 'dr_grpo', got {self.advantage!r}")
        if self.kl_estimator not in ("k3", "exact"):
            raise ValueError(f"GRPOConfig: kl_estimator must be 'k3' or 'exact', got {self.kl_estimator!r}")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"GRPOConfig: clip_eps must be in (0, 1), got {self.clip_eps}")
        if self.init_kl_coef < 0:
            raise ValueError(f"GRPOConfig: init_kl_coef must be >= 0, got {self.init_kl_coef}")
        if self.kl_target <= 0 or self.kl_horizon < 1:
            raise ValueError(f"GRPOConfig: kl_target must be > 0 and kl_horizon >= 1, got {self.kl_target}, "
                             f"{self.kl_horizon}")


@dataclass
class RLOOConfig(SampledConfig):
    """RLOO (Ahmadian et al. 2024): leave-one-out baseline over k samples, KL in the reward."""
    group_size: int = 4              # k samples per prompt; batch_size / k prompts per step (the paper: 2-4)
    update: str = "reinforce"        # "reinforce": -A log pi(y) per sequence, one pass (the paper's; epochs
                                     # ignored); "clipped": PPO's clipped ratio per token with A on every token
    clip_eps: float = 0.2            # epsilon of the clipped ratio ("clipped" only)
    kl_estimator: str = "sampled"    # KL_t in the reward: "sampled" log pi(a_t) - log q(a_t), or "exact"
    init_kl_coef: float = 0.15       # beta in R = s - beta sum_t KL_t (scores normalised to std 1; PPO's)
    adaptive_kl: bool = True         # adapt beta toward kl_target (PPO's controller)
    kl_target: float = 5.5           # wanted mean KL per response in nats (PPO's)
    kl_horizon: int = 1000           # sequences over which beta can change by ~e (PPO's)

    def __post_init__(self):
        self._check_common("RLOOConfig")
        if self.group_size < 2:
            raise ValueError(f"RLOOConfig: group_size must be >= 2 (leave-one-out needs another sample), "
                             f"got {self.group_size}")
        if self.batch_size % self.group_size:
            raise ValueError(f"RLOOConfig: batch_size {self.batch_size} is not a multiple of group_size "
                             f"{self.group_size}")
        if self.update not in ("reinforce", "clipped"):
            raise ValueError(f"RLOOConfig: update must be 'reinforce' or 'clipped', got {self.update!r}")
        if self.kl_estimator not in ("exact", "sampled"):
            raise ValueError(f"RLOOConfig: kl_estimator must be 'exact' or 'sampled', got {self.kl_estimator!r}")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"RLOOConfig: clip_eps must be in (0, 1), got {self.clip_eps}")
        if self.kl_target <= 0 or self.kl_horizon < 1:
            raise ValueError(f"RLOOConfig: kl_target must be > 0 and kl_horizon >= 1, got {self.kl_target}, "
                             f"{self.kl_horizon}")


@dataclass
class DPOConfig(SampledConfig):
    """DPO (Rafailov et al. 2023) on scorer-labelled pairs: batch_size / 2 prompts x 2 completions per step."""
    beta: float = 0.1                # beta of -log sigmoid(beta (delta_policy - delta_reference)); the paper 0.1
    online: bool = False             # False: pairs sampled from the reference (offline DPO, the reward model's
                                     # data, drawn fresh each step); True: from the current policy each step
                                     # (iterated / online DPO, Guo et al. 2024)
    min_margin: float = 0.05         # drop pairs whose scores differ by less (ties; RewardModelConfig's)
    epochs: int = 2                  # passes over each step's pairs
    minibatch_size: int = 8          # pairs per gradient step
    lr: float = 2e-5                 # AdamW learning rate

    def __post_init__(self):
        self._check_common("DPOConfig")
        if self.batch_size % 2:
            raise ValueError(f"DPOConfig: batch_size must be even (two completions per prompt), got {self.batch_size}")
        if self.beta <= 0:
            raise ValueError(f"DPOConfig: beta must be > 0, got {self.beta}")
        if self.min_margin < 0:
            raise ValueError(f"DPOConfig: min_margin must be >= 0, got {self.min_margin}")


CONFIGS = {"ppo": PPOConfig, "grpo": GRPOConfig, "rloo": RLOOConfig, "dpo": DPOConfig}
