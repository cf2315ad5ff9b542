"""BuCSFR's SFR objective: a soft-target contrastive loss whose positives are queue entries
sampled from the anchor's cluster (shared/methods/bucsfr.md 4.3).

For anchors i (query q_i, key k_i, coarse label y_i, cluster a_i from the last BuC step) and
queue entries j (unit keys Q_j with coarse labels y~_j):

  P_j(c)  = softmax_c(Q_j . mu_c / t_proto)          over the live clusters (t_proto = 0.01)
  s_ij    = [y~_j == y_i]
  p+_ij   = P_j(a_i) s_ij / max_j' P_j'(a_i) s_ij'     M+ ~ Bernoulli(clip(p+, 0, 0.999))
  p-_ij   = (1 - P_j(a_i)) s_ij / max_j' (...)          M- ~ Bernoulli(clip(p-, 0, 0.999))
  m_ij    = M-_ij + (1 - s_ij) + M+_ij                  in {0, 1, 2}
  z_i     = [q_i . k_i, m_ij q_i . Q_j] / t             (masked logits are 0, not -inf)
  w_ij    = M+_ij exp((k_i . Q_j - max_{M+} k_i . Q) / t_pos),   t_i = [1, w_i] / (1 + sum w_i)
  L       = mean_i -sum_j t_ij log softmax(z_i)_j

A row with no same-coarse entry (max = 0) selects nothing: no positives, no same-coarse
negatives (the original raised and fell back to plain MoCo for the whole batch, spec 4.3).
Masks, targets, centroids and the queue carry no gradient; only q does.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Selection(NamedTuple):
    """Per anchor and queue entry `[B, K]`: the same-coarse indicator and the sampled masks."""

    same: jax.Array  # bool
    positive: jax.Array  # bool, M+
    negative: jax.Array  # bool, M-


def anchor_posterior(
    queue: jax.Array,
    centroids: jax.Array,
    num_clusters: jax.Array,
    anchor_clusters: jax.Array,
    temperature: float,
) -> jax.Array:
    """`P [B, K]`: P_ij = softmax over the first `num_clusters` rows of `centroids [C_max, d]`
    of `queue [K, d]` . mu_c / temperature, read at the anchor's cluster `anchor_clusters [B]`."""
    live = jnp.arange(centroids.shape[0]) < num_clusters
    scores = jnp.where(live, queue @ centroids.T / temperature, -jnp.inf)  # [K, C_max]
    log_partition = jax.nn.logsumexp(scores, axis=1)  # [K]
    anchor_scores = centroids[anchor_clusters] @ queue.T / temperature  # [B, K]
    return jnp.exp(anchor_scores - log_partition[None, :])


def _max_normalised(x: jax.Array) -> jax.Array:
    """Rows of `x [B, K]` divided by their maximum; rows whose maximum is 0 stay 0."""
    top = jnp.max(x, axis=1, keepdims=True)
    return jnp.where(top > 0, x / jnp.where(top > 0, top, 1.0), 0.0)


def selection_probabilities(posterior: jax.Array, same: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(p+, p-)` `[B, K]` before clipping, from `posterior [B, K]` and the same-coarse mask."""
    same = same.astype(posterior.dtype)
    return _max_normalised(posterior * same), _max_normalised((1.0 - posterior) * same)


def selection_from_uniforms(
    u_pos: jax.Array,
    u_neg: jax.Array,
    posterior: jax.Array,
    queue_coarse: jax.Array,
    coarse: jax.Array,
) -> Selection:
    """M+ = u_pos < clip(p+, 0, 0.999) and M- = u_neg < clip(p-, 0, 0.999) (Bernoulli draws
    from given uniforms `[B, K]` in [0, 1)) for anchors of coarse labels `coarse [B]`
    against a queue labelled `queue_coarse [K]`, given `posterior [B, K]`."""
    same = queue_coarse[None, :] == coarse[:, None]
    p_pos, p_neg = selection_probabilities(posterior, same)
    draw = lambda u, p: u < jnp.clip(p, 0.0, 0.999)
    return Selection(same, draw(u_pos, p_pos), draw(u_neg, p_neg))


def sample_selection(
    key: jax.Array, posterior: jax.Array, queue_coarse: jax.Array, coarse: jax.Array
) -> Selection:
    """`selection_from_uniforms` with M+ and M- drawn independently: the uniforms of
    `jax.random.split(key)` (what `jax.random.bernoulli` draws)."""
    pos_key, neg_key = jax.random.split(key)
    u_pos, u_neg = (jax.random.uniform(k, posterior.shape) for k in (pos_key, neg_key))
    return selection_from_uniforms(u_pos, u_neg, posterior, queue_coarse, coarse)


def soft_target_contrastive(
    q: jax.Array,
    k: jax.Array,
    queue: jax.Array,
    selection: Selection,
    temperature: float,
    positive_temperature: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(loss, logits [B, 1 + K], targets [B, 1 + K])` of unit queries `q [B, d]`, keys
    `k [B, d]` and `queue [K, d]` under a sampled `selection`; gradients reach `q` only."""
    k, queue = jax.lax.stop_gradient(k), jax.lax.stop_gradient(queue)
    mask = (
        selection.negative.astype(q.dtype)
        + (~selection.same).astype(q.dtype)
        + selection.positive.astype(q.dtype)
    )
    own = jnp.sum(q * k, axis=1, keepdims=True)
    logits = jnp.concatenate([own, (q @ queue.T) * mask], axis=1) / temperature
    similarity = k @ queue.T / positive_temperature
    top = jnp.max(jnp.where(selection.positive, similarity, -jnp.inf), axis=1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # no positive selected: weights all 0
    weights = jnp.where(selection.positive, jnp.exp(similarity - top), 0.0)
    targets = jnp.concatenate([jnp.ones_like(own), weights], axis=1)
    targets = targets / jnp.sum(targets, axis=1, keepdims=True)
    log_probs = jax.nn.log_softmax(logits, axis=1)
    loss = jnp.mean(-jnp.sum(targets * log_probs, axis=1))
    return loss, logits, targets
