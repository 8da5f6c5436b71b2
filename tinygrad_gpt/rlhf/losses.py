"""PPO's objectives as ops: clipped surrogate, clipped value loss, entropy, whitening, Bradley-Terry.

Every equation is written next to the line that computes it, and every backward quotes the forward
line it differentiates (numbered F1, F2, ... in forward, undone in reverse in backward). All of them
work on per-token arrays (B, T) with a float `mask` (B, T) of 1 where a token counts and 0 where it
does not; a masked mean is  mean_m(x) = sum_{b,t} m_bt x_bt / sum_{b,t} m_bt.

The PPO objective (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7, and the
value-clipping of the OpenAI baselines ppo2 / Ziegler et al. 2019 lm-human-preferences code):

    r_t(theta)  = pi_theta(a_t | s_t) / pi_old(a_t | s_t) = exp(logp_t - logp_old_t)
    L_CLIP      = mean_m( max( -A_t r_t, -A_t clip(r_t, 1 - eps, 1 + eps) ) )      (to minimise)
    L_VF        = 1/2 mean_m( max( (V_t - R_t)^2, (V_old_t + clip(V_t - V_old_t, -c, c) - R_t)^2 ) )
    H           = mean_m( -sum_v p_t(v) log p_t(v) )                                  (to maximise)
    L_KL        = mean_m( sum_v p_t(v) (log p_t(v) - log q_t(v)) )   exact KL to the reference q
    loss        = L_CLIP + vf_coef L_VF - ent_coef H + kl_loss_coef L_KL

Whitening (advantages):  A'_t = (A_t - mean_m(A)) / sqrt(var_m(A) + eps), 0 where m = 0.
Reward-model loss (Bradley-Terry; Christiano et al. 2017, Ouyang et al. 2022 eq. 1):
    P(chosen > rejected) = sigmoid(r_c - r_r),  L_BT = mean( -log sigmoid(r_c - r_r) ) = mean softplus(r_r - r_c)

Dimension legend: B sequences, T tokens per sequence (response length), V vocabulary.
Follows: the papers above; TRL's PPOTrainer (loss layout, whiten); llm.c's forward/backward pairing.
Deliberately does not: take gradients w.r.t. the old log-probs, old values, advantages, returns or
mask (they are constants of a PPO step, passed as keyword parameters), or support second derivatives.
"""
from tinygrad_gpt.backend import array_module
from tinygrad_gpt.tensor import Function, Tensor, no_grad, unwrap


def check_mask(name, x, mask):
    if mask.shape != x.shape:
        raise ValueError(f"{name}: mask has shape {mask.shape}, the input has shape {x.shape}")
    count = float(mask.sum())
    if count <= 0:
        raise ValueError(f"{name}: the mask selects no element (sum of mask is {count}); a masked mean needs >= 1")
    return count


def check_same_shape(name, x, **others):
    for key, value in others.items():
        if value.shape != x.shape:
            raise ValueError(f"{name}: {key} has shape {value.shape}, expected {x.shape} (the shape of the input)")


def _check_vocab_mask(name, logits, mask):
    """The token count of a mask (B, T) over logits (B, T, V); errors name the shapes."""
    if mask.shape != logits.shape[:-1]:
        raise ValueError(f"{name}: mask has shape {mask.shape}, expected {logits.shape[:-1]} (logits without V)")
    return check_mask(name, logits[..., 0], mask)


def _log_softmax(xp, logits):
    """log p and p = softmax(logits) over the last axis, without overflow in exp."""
    shifted = logits - logits.max(axis=-1, keepdims=True)            # (B, T, V)
    logp = shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))  # (B, T, V)
    return logp, xp.exp(logp)


class PolicyLoss(Function):
    """L_CLIP: PPO's clipped surrogate, a scalar, from new log-probs (B, T) of the sampled tokens."""

    @staticmethod
    def forward(ctx, logprobs, old_logprobs, advantages, mask, clip_eps):
        xp = array_module(logprobs)
        check_same_shape("policy_loss", logprobs, old_logprobs=old_logprobs, advantages=advantages)
        n = check_mask("policy_loss", logprobs, mask)
        dt = logprobs.dtype.type
        ratio = xp.exp(logprobs - old_logprobs)                           # F1 (B, T) r_t = exp(logp_t - logp_old_t)
        clipped_ratio = xp.clip(ratio, dt(1 - clip_eps), dt(1 + clip_eps))  # F2 (B, T) clip(r_t, 1-eps, 1+eps)
        unclipped = -advantages * ratio                                   # F3 (B, T) -A_t r_t
        clipped = -advantages * clipped_ratio                             # F4 (B, T) -A_t clip(r_t, ...)
        # subtle: inside [1-eps, 1+eps] both terms are equal and the unclipped one (whose gradient
        # is the true one there) is taken; the clipped term can win only outside the range
        inside = (ratio >= dt(1 - clip_eps)) & (ratio <= dt(1 + clip_eps))  # (B, T)
        use_unclipped = inside | (unclipped >= clipped)                   # (B, T) which term the max takes
        per_token = xp.where(use_unclipped, unclipped, clipped)           # F5 (B, T) max(-A r, -A clip(r))
        ctx.ratio, ctx.advantages, ctx.use_unclipped = ratio, advantages, use_unclipped
        ctx.mask, ctx.n = mask.astype(logprobs.dtype, copy=False), dt(n)
        return xp.asarray((per_token * ctx.mask).sum() / ctx.n, dtype=logprobs.dtype)  # F6 () mean_m(...)

    @staticmethod
    def backward(ctx, dout):
        xp = array_module(dout)
        # F6: loss = sum m_t per_token_t / n, so dper_token_t = dout m_t / n
        dper_token = dout * ctx.mask / ctx.n                              # (B, T)
        # F5: per_token = unclipped where use_unclipped else clipped; F4 is constant in logp where it
        # wins (it wins only with r outside [1-eps, 1+eps], where clip() is flat), so only F3 passes:
        # F3: unclipped = -A r, so dr = -A dunclipped
        dratio = xp.where(ctx.use_unclipped, -ctx.advantages * dper_token, 0)  # (B, T)
        # F1: r = exp(logp - logp_old), so dlogp = r dr
        return (ctx.ratio * dratio).astype(dout.dtype, copy=False)


def policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2):
    """L_CLIP (a scalar Tensor) for new log-probs `logprobs` (B, T) Tensor; the rest are arrays."""
    lp = unwrap(logprobs)
    xp = array_module(lp)
    return PolicyLoss.apply(logprobs, old_logprobs=xp.asarray(unwrap(old_logprobs), dtype=lp.dtype),
                            advantages=xp.asarray(unwrap(advantages), dtype=lp.dtype),
                            mask=xp.asarray(unwrap(mask)), clip_eps=float(clip_eps))


class ValueLoss(Function):
    """L_VF: the clipped value loss, a scalar, from the value head's predictions (B, T)."""

    @staticmethod
    def forward(ctx, values, old_values, returns, mask, clip_range):
        xp = array_module(values)
        check_same_shape("value_loss", values, old_values=old_values, returns=returns)
        n = check_mask("value_loss", values, mask)
        dt = values.dtype.type
        delta = values - old_values                                       # F1 (B, T) V_t - V_old_t
        v_clipped = old_values + xp.clip(delta, dt(-clip_range), dt(clip_range))  # F2 (B, T) V_old + clip(., -c, c)
        err = values - returns                                            # F3 (B, T) V_t - R_t
        err_clipped = v_clipped - returns                                 # F4 (B, T)
        sq, sq_clipped = err * err, err_clipped * err_clipped             # F5 (B, T) squared errors
        # subtle: inside the range V_old + (V - V_old) equals V only up to rounding, so comparing the
        # squares alone could pick the clipped term (gradient 0) by one ulp; inside, take the unclipped
        inside = xp.abs(delta) <= dt(clip_range)                          # (B, T)
        use_unclipped = inside | (sq >= sq_clipped)                       # (B, T)
        per_token = xp.where(use_unclipped, sq, sq_clipped)               # F6 (B, T) max(sq, sq_clipped)
        ctx.err, ctx.use_unclipped = err, use_unclipped
        ctx.mask, ctx.n = mask.astype(values.dtype, copy=False), dt(n)
        return xp.asarray(dt(0.5) * (per_token * ctx.mask).sum() / ctx.n, dtype=values.dtype)  # F7 ()

    @staticmethod
    def backward(ctx, dout):
        xp = array_module(dout)
        # F7: loss = 1/2 sum m_t per_token_t / n, so dper_token_t = dout m_t / (2 n)
        dper_token = dout * ctx.mask / (2 * ctx.n)                        # (B, T)
        # F6 + F5: the clipped square wins strictly only when |V - V_old| > c, where F2's clip is
        # flat in V (dv_clipped/dV = 0); so only sq = err^2 passes: dsq/dV = 2 err (F3: derr/dV = 1)
        return xp.where(ctx.use_unclipped, 2 * ctx.err * dper_token, 0).astype(dout.dtype, copy=False)


def value_loss(values, old_values, returns, mask, clip_range=0.2):
    """L_VF (a scalar Tensor) for the value head's `values` (B, T) Tensor; the rest are arrays."""
    v = unwrap(values)
    xp = array_module(v)
    return ValueLoss.apply(values, old_values=xp.asarray(unwrap(old_values), dtype=v.dtype),
                           returns=xp.asarray(unwrap(returns), dtype=v.dtype), mask=xp.asarray(unwrap(mask)),
                           clip_range=float(clip_range))


class Whiten(Function):
    """A' = (A - mean_m(A)) / sqrt(var_m(A) + eps) over the masked elements; 0 where the mask is 0.

    var_m is the biased masked variance, sum m (A - mean)^2 / n (as LayerNorm; TRL uses n - 1).
    """

    @staticmethod
    def forward(ctx, x, mask, eps=1e-8):
        xp = array_module(x)
        n = check_mask("whiten", x, mask)
        dt = x.dtype.type
        m = mask.astype(x.dtype, copy=False)                              # (B, T)
        mean = (x * m).sum() / dt(n)                                      # F1 () mean_m(x)
        centered = (x - mean) * m                                         # F2 (B, T) x - mean, 0 off the mask
        var = (centered * centered).sum() / dt(n)                         # F3 () var_m(x)
        rstd = dt(1.0) / xp.sqrt(var + dt(eps))                           # F4 () 1 / sqrt(var + eps)
        out = centered * rstd                                             # F5 (B, T) the whitened values
        ctx.out, ctx.rstd, ctx.m, ctx.n = out, rstd, m, dt(n)
        return out

    @staticmethod
    def backward(ctx, dout):
        # The LayerNorm backward over the masked elements (llm.c layernorm_backward), derived:
        # F5: out = centered rstd and F4: drstd/dvar = -rstd^3 / 2, F3: dvar/dx_k = 2 m_k centered_k / n
        #   (the mean's share of F3 sums to zero), F2 + F1: dcentered_i/dx_k = m_i (delta_ik - m_k / n).
        # Together, with g = dout m:  dx_k = rstd m_k (g_k - sum(g) / n - out_k sum(g out) / n)
        g = dout * ctx.m                                                  # (B, T)
        mean_g = g.sum() / ctx.n                                          # ()
        mean_g_out = (g * ctx.out).sum() / ctx.n                          # ()
        return (ctx.rstd * ctx.m * (g - mean_g - ctx.out * mean_g_out)).astype(dout.dtype, copy=False)


def whiten(x, mask, eps=1e-8):
    """Masked whitening of a Tensor (differentiable) or an array (returns an array)."""
    if isinstance(x, Tensor):
        return Whiten.apply(x, mask=x.xp.asarray(unwrap(mask)), eps=eps)
    with no_grad():
        return Whiten.apply(Tensor(x), mask=array_module(x).asarray(mask), eps=eps).data


class Entropy(Function):
    """H = mean_m( -sum_v p_t(v) log p_t(v) ) of the softmax of logits (B, T, V): a scalar."""

    @staticmethod
    def forward(ctx, logits, mask):
        xp = array_module(logits)
        n = _check_vocab_mask("entropy", logits, mask)
        dt = logits.dtype.type
        logp, p = _log_softmax(xp, logits)                                # F1-F2 (B, T, V) log p, p = softmax
        h = -(p * logp).sum(axis=-1)                                      # F3 (B, T) H_t = -sum_v p log p
        ctx.p, ctx.logp, ctx.h = p, logp, h
        ctx.m, ctx.n = mask.astype(logits.dtype, copy=False), dt(n)
        return xp.asarray((h * ctx.m).sum() / ctx.n, dtype=logits.dtype)  # F4 () mean_m(H_t)

    @staticmethod
    def backward(ctx, dout):
        # F4: dH_t = dout m_t / n
        dh = (dout * ctx.m / ctx.n)[..., None]                            # (B, T, 1)
        # F3 through F1-F2: dH_t/dz_i = -p_i (log p_i + H_t)  (softmax Jacobian p_i (delta_ij - p_j)
        # applied to dH/dlogp_j = -(log p_j + 1); the "+1" vanishes because sum_j p_j (delta_ij - p_j) = 0)
        return (-ctx.p * (ctx.logp + ctx.h[..., None]) * dh).astype(dout.dtype, copy=False)


def entropy(logits, mask):
    """Masked mean entropy (a scalar Tensor) of softmax(logits) for logits (B, T, V)."""
    return Entropy.apply(logits, mask=logits.xp.asarray(unwrap(mask)))


class KLToReference(Function):
    """L_KL = mean_m( KL(p_t || q_t) ), p = softmax(logits (B, T, V)), q given as log-probs (B, T, V): a scalar.

    The exact KL over the vocabulary as a loss term (GRPO, Shao et al. 2024, puts a KL estimate in the
    loss instead of the reward): its gradient reaches every token's whole distribution, where a KL in
    the reward only reaches the sampled token, through a noisy advantage.
    """

    @staticmethod
    def forward(ctx, logits, ref_logprobs, mask):
        xp = array_module(logits)
        check_same_shape("kl_to_reference", logits, ref_logprobs=ref_logprobs)
        n = _check_vocab_mask("kl_to_reference", logits, mask)
        dt = logits.dtype.type
        logp, p = _log_softmax(xp, logits)                                # F1-F2 (B, T, V) log p, p = softmax
        log_ratio = logp - ref_logprobs                                   # F3 (B, T, V) log p - log q
        kl = (p * log_ratio).sum(axis=-1)                                 # F4 (B, T) KL_t = sum_v p log(p / q)
        ctx.p, ctx.log_ratio, ctx.kl = p, log_ratio, kl
        ctx.m, ctx.n = mask.astype(logits.dtype, copy=False), dt(n)
        return xp.asarray((kl * ctx.m).sum() / ctx.n, dtype=logits.dtype)  # F5 () mean_m(KL_t)

    @staticmethod
    def backward(ctx, dout):
        # F5: dKL_t = dout m_t / n
        dkl = (dout * ctx.m / ctx.n)[..., None]                           # (B, T, 1)
        # F4 through F1-F3: dKL_t/dlogp_j = p_j (log p_j - log q_j + 1); the log_softmax Jacobian
        # (delta_ij - p_i) turns that into dKL_t/dz_i = p_i (log p_i - log q_i - KL_t) (the "+1" cancels)
        return (ctx.p * (ctx.log_ratio - ctx.kl[..., None]) * dkl).astype(dout.dtype, copy=False)


def kl_to_reference(logits, ref_logprobs, mask):
    """Masked mean exact KL(softmax(logits) || exp(ref_logprobs)) (a scalar Tensor); both (B, T, V)."""
    xp = logits.xp
    return KLToReference.apply(logits, ref_logprobs=xp.asarray(unwrap(ref_logprobs), dtype=logits.data.dtype),
                               mask=xp.asarray(unwrap(mask)))


class BradleyTerryLoss(Function):
    """L_BT = mean_i softplus(r_rejected_i - r_chosen_i) = mean -log sigmoid(r_c - r_r); inputs (N,)."""

    @staticmethod
    def forward(ctx, r_chosen, r_rejected):
        xp = array_module(r_chosen)
        check_same_shape("bradley_terry_loss", r_chosen, r_rejected=r_rejected)
        if r_chosen.size == 0:
            raise ValueError("bradley_terry_loss: got no pairs (empty inputs)")
        margin = r_chosen - r_rejected                                    # F1 (N,) r_c - r_r
        losses = xp.logaddexp(0, -margin)                                 # F2 (N,) softplus(-margin), stable
        ctx.margin, ctx.n = margin, r_chosen.size
        return xp.asarray(losses.mean(), dtype=r_chosen.dtype)            # F3 () mean

    @staticmethod
    def backward(ctx, dout):
        xp = array_module(dout)
        # F3: dlosses_i = dout / N;  F2: dsoftplus(-u)/du = -sigmoid(-u)
        dmargin = -dout / ctx.n / (1 + xp.exp(ctx.margin))               # (N,) -sigmoid(-margin) dout / N
        # F1: margin = r_c - r_r, so dr_c = dmargin, dr_r = -dmargin
        dmargin = dmargin.astype(dout.dtype, copy=False)
        return dmargin, -dmargin


def bradley_terry_loss(r_chosen, r_rejected):
    return BradleyTerryLoss.apply(r_chosen, r_rejected)
