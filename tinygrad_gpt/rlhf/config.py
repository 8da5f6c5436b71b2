"""PPOConfig, GRPOConfig, RLOOConfig, DPOConfig: every knob of each RLHF method, with what it does and its usual value.

Usual values are those of Ziegler et al. 2019 / Stiennon et al. 2020 and TRL's PPOConfig (and each
method's paper), adjusted where a 65-character model on a CPU wants something else (said per field).
Each field declares its range with `setting(...)` (tinygrad_gpt/settings.py): checked in __post_init__,
and the scripts' flags come from the fields (cli.add_flags in examples/rlhf_sentiment.py,
benchmarks/rlhf.py); CONFIGS maps each `--algo` to its class.

Deliberately does not: hold model or reward-model settings (GPTConfig and RewardModelConfig do).
"""
from dataclasses import dataclass

from tinygrad_gpt.settings import check_fields, setting
from tinygrad_gpt.rlhf.scorers import POSITIVE_THRESHOLD


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
    # a score above it is "positive": positive_bonus's line, and the metrics' score_pos_frac; VADER's own line
    positive_threshold: float = setting(POSITIVE_THRESHOLD, ge=-1, le=1)
    norm_batches: int = setting(2, ge=1)  # reference batches sampled to measure the score's mean and std (normaliser)
    # ---- advantages ----
    gamma: float = setting(1.0, ge=0, le=1)  # discount; 1 for text (the episode is 64 tokens, nothing to discount)
    lam: float = setting(1.0, ge=0, le=1)  # GAE lambda; TRL / Ziegler 0.95. 1 here: the score comes at the last of 64
                                     # tokens, and at 0.95 the first token's advantage keeps 0.95^63 = 4% of it,
                                     # the rest left to a value head that starts at zero. Stable only with
                                     # kl_loss_coef (benchmarks/LOG.md, 2026-11-22, PPO's recipe)
    whiten_advantages: bool = True   # masked whitening of advantages over the batch; always on in practice
    # ---- optimisation ----
    ppo_epochs: int = setting(4, ge=1)  # passes over each rollout batch; TRL 4
    minibatch_size: int = setting(16, ge=1)  # sequences per gradient step; batch_size / minibatch_size steps per epoch
    lr: float = setting(2e-5, gt=0)  # AdamW learning rate; TRL 1.41e-5 (GPT-2); higher spends the KL budget early
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
    # reward); pulls every token's distribution back, not only the sampled one's; 0 = off (TRL). With lam 1 it is
    # what keeps PPO stable; 0.2 gave the most positive completions per nat of KL (benchmarks/LOG.md, 2026-11-22)
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


# ---- the critic-free methods and DPO -------------------------------------------------------------
# Their field names match PPOConfig's where the knob is the same (steps, batch_size, lr, ...), so the
# trainers' shared code (trainer.py) and the scripts' flags (cli.add_flags) treat every method alike.
# Defaults give every method the same budget as PPO's: 150 steps x 64 generated completions.

ALGOS = ("ppo", "grpo", "rloo", "dpo")


@dataclass
class SampledConfig:
    # ---- rollouts ----
    steps: int = setting(150, ge=1)  # steps; each generates batch_size completions and optimises on them
    batch_size: int = setting(64, ge=1)  # completions generated per step (all methods: PPO's 64)
    prompt_len: int = setting(64, ge=1)  # characters per prompt, a window of the validation split (no padding)
    response_len: int = setting(64, ge=1)  # characters sampled per response
    # divides the logits when sampling AND when recomputing log-probs
    temperature: float = setting(1.0, gt=0)
    # response chunk per KV-cache window when P + R > block_size; None = block // 2
    window_stride: int | None = setting(None, ge=1)
    # ---- reward (as PPOConfig) ----
    score_power: float = setting(1.0, gt=0)  # the score enters as sign(s) |s|^p before normalising; 1 = s itself
    # added to a score above positive_threshold before normalising; 0 = off
    positive_bonus: float = setting(0.0, ge=0)
    positive_threshold: float = setting(POSITIVE_THRESHOLD, ge=-1, le=1)  # "positive" above it (as PPOConfig)
    norm_batches: int = setting(2, ge=1)  # reference batches sampled to fit the score normaliser (mean 0, std 1)
    # ---- optimisation ----
    epochs: int = setting(2, ge=1)  # passes over each step's batch (PPO's ppo_epochs)
    minibatch_size: int = setting(16, ge=1)  # sequences (DPO: pairs) per gradient step
    lr: float = setting(2e-5, gt=0)  # AdamW learning rate (PPO's)
    adam_betas: tuple = (0.9, 0.95)  # AdamW betas
    weight_decay: float = setting(0.0, ge=0)  # 0: decay would pull the policy away from the reference for no reason
    max_grad_norm: float = setting(1.0, ge=0)  # global gradient-norm clip; 0 turns it off
    seed: int = setting(0, ge=0)  # rollouts, prompt draws and minibatch shuffles
    device: str = setting("cpu", flag=False)

    def _check_common(self):
        """The declared ranges, AdamW's betas and, for the grouped methods, whole groups in a batch."""
        name = type(self).__name__
        check_fields(self)
        if not (len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas)):
            raise ValueError(f"{name}: adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        group_size = getattr(self, "group_size", None)
        if group_size and self.batch_size % group_size:
            raise ValueError(f"{name}: batch_size {self.batch_size} is not a multiple of group_size {group_size}")


@dataclass
class GRPOConfig(SampledConfig):
    """GRPO (Shao et al. 2024, DeepSeekMath): group-normalised advantages, clipped ratio, KL in the loss."""
    # G responses per prompt; batch_size / G prompts per step (DeepSeekMath 64); a group of 1 has no spread
    group_size: int = setting(8, ge=2)
    # "grpo": (s - mean_g) / (std_g + eps), the paper's (default); "dr_grpo": s - mean_g (Liu et al. 2025,
    # "Dr. GRPO": no std division, which up-weights easy / hard groups, and a constant length normaliser)
    advantage: str = setting("grpo", choices=("grpo", "dr_grpo"))
    adv_eps: float = setting(1e-4, gt=0)  # eps in the std division (a group with spread 0 gets advantage 0)
    clip_eps: float = setting(0.2, gt=0, lt=1)  # epsilon of the clipped ratio, r in [1 - eps, 1 + eps]
    # the KL term of the loss: "k3" exp(q - p) - (q - p) - 1 at the sampled token (the paper's, unbiased,
    # >= 0), or "exact" sum over the vocabulary
    kl_estimator: str = setting("k3", choices=("k3", "exact"))
    # beta of the KL term (DeepSeekMath 0.04 for a far larger, flatter vocabulary distribution; adapted
    # below when adaptive_kl)
    init_kl_coef: float = setting(0.2, ge=0)
    adaptive_kl: bool = True         # adapt beta toward kl_target (the same controller and target as PPO's), so
                                     # the methods compare at one KL
    kl_target: float = setting(5.5, gt=0)  # wanted mean KL per response, nats summed over its tokens (PPO's)
    kl_horizon: int = setting(1000, ge=1)  # sequences over which beta can change by ~e (PPO's)

    def __post_init__(self):
        self._check_common()


@dataclass
class RLOOConfig(SampledConfig):
    """RLOO (Ahmadian et al. 2024): leave-one-out baseline over k samples, KL in the reward."""
    # k samples per prompt; batch_size / k prompts per step (the paper: 2-4); leave-one-out needs another sample
    group_size: int = setting(4, ge=2)
    # "reinforce": -A log pi(y) per sequence, one pass (the paper's; epochs ignored); "clipped": PPO's
    # clipped ratio per token with A on every token
    update: str = setting("reinforce", choices=("reinforce", "clipped"))
    clip_eps: float = setting(0.2, gt=0, lt=1)  # epsilon of the clipped ratio ("clipped" only)
    # KL_t in the reward: "sampled" log pi(a_t) - log q(a_t), or "exact"
    kl_estimator: str = setting("sampled", choices=("exact", "sampled"))
    # beta in R = s - beta sum_t KL_t (scores normalised to std 1; PPO's)
    init_kl_coef: float = setting(0.15, ge=0)
    adaptive_kl: bool = True         # adapt beta toward kl_target (PPO's controller)
    kl_target: float = setting(5.5, gt=0)  # wanted mean KL per response in nats (PPO's)
    # sequences over which beta can change by ~e; shorter than PPO's 1000: RLOO's KL runs low early and overshoots
    # in mid-run, and a slower controller lets beta fall too far to pull it back before the run ends
    # (benchmarks/LOG.md, 2026-12-02, RLHF methods side by side)
    kl_horizon: int = setting(300, ge=1)

    def __post_init__(self):
        self._check_common()


@dataclass
class DPOConfig(SampledConfig):
    """DPO (Rafailov et al. 2023) on scorer-labelled pairs: batch_size / k prompts x k completions per step.

    Defaults: online, best vs worst of 4, beta 0.63, chosen on the RLHF benchmark's targets at PPO's
    budget (the search: benchmarks/LOG.md, 2026-12-02, DPO's recipe; the result: benchmarks/RESULTS.md)."""
    # beta of -log sigmoid(beta (delta_policy - delta_reference)); the paper 0.1. DPO's only tie to the reference
    # (it bounds the log-ratio margin the loss still pays for at ~few / beta nats), and there is no KL controller:
    # beta alone decides where a run stops. Smaller ran away from the reference (the paper's 0.1, online, ended
    # repeating one word), larger fell short of the score, and the end KL is steep in beta, so 0.63 sits between the
    # nearest two that each missed a target
    beta: float = setting(0.63, gt=0)
    # k completions per prompt; the prompt's pair is the best- against the worst-scored of them (k = 2: the two),
    # batch_size / k pairs per step before ties are dropped. 4 rather than 2: fewer pairs, each the widest gap of
    # its prompt, which reached a higher score at the same KL
    group_size: int = setting(4, ge=2)
    # True: pairs from the current policy each step (iterated / online DPO, Guo et al. 2024); False: from the
    # frozen reference (offline DPO, the reward model's data, drawn fresh each step), whose pairs are of texts the
    # policy moves away from: the KL grows while its own samples barely improve
    online: bool = True
    # drop pairs whose scores differ by less (ties; RewardModelConfig's)
    min_margin: float = setting(0.05, ge=0)
    epochs: int = setting(2, ge=1)  # passes over each step's pairs
    minibatch_size: int = setting(8, ge=1)  # pairs per gradient step
    lr: float = setting(2e-5, gt=0)  # AdamW learning rate

    def __post_init__(self):
        self._check_common()


CONFIGS = {"ppo": PPOConfig, "grpo": GRPOConfig, "rloo": RLOOConfig, "dpo": DPOConfig}
