"""SimCLRv2: NT-Xent against the paper's formula and across devices, the distillation loss, the
frozen teacher, the three stages and what each takes from the one before."""

import jax
import jax.numpy as jnp
import numpy as np

from semi_ssl import parallel
from semi_ssl.ops import losses


def nt_xent_reference(z1, z2, temperature):
  """Chen et al. 2020, Algorithm 1, written out: views 2k and 2k+1 are image k's, s the cosine,
  l(i, j) = -log(exp(s_ij / t) / sum_{k != i} exp(s_ik / t)), L = mean over k of
  l(2k, 2k+1) + l(2k+1, 2k), halved."""
  z = np.stack([z1, z2], axis=1).reshape(-1, z1.shape[1]).astype(np.float64)
  n = z.shape[0]
  s = lambda i, j: z[i] @ z[j] / np.linalg.norm(z[i]) / np.linalg.norm(z[j])
  l = lambda i, j: (
    -np.log(
      np.exp(s(i, j) / temperature) / sum(np.exp(s(i, k) / temperature) for k in range(n) if k != i)
    )
  )
  return sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(n // 2)) / n


def test_nt_xent_equals_the_papers_formula():
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(2, 6, 5)).astype(np.float32)
  for temperature in (0.1, 0.5, 1.0):
    np.testing.assert_allclose(
      losses.nt_xent(z1, z2, temperature), nt_xent_reference(z1, z2, temperature), rtol=1e-5
    )


def test_nt_xent_by_hand():
  """Two images, views e1, e1 and e2, e2 at t = 1: each anchor has its positive at cosine 1 and
  two negatives at 0, so l = -log(e / (e + 2)); one image alone has no negative, l = 0."""
  eye = np.eye(2, dtype=np.float32)
  np.testing.assert_allclose(losses.nt_xent(eye, 3 * eye, 1.0), np.log(1 + 2 / np.e), rtol=1e-6)
  np.testing.assert_allclose(losses.nt_xent(eye[:1], -eye[:1], 0.1), 0.0, atol=1e-6)


def test_nt_xent_negatives_span_every_device():
  """On 8 devices, each holding 2 of the 16 images, the jitted loss and its gradients equal one
  device's: the negatives are the whole global batch, not a device's rows (whose mean loss
  differs)."""
  assert len(jax.devices()) == 8
  rng = np.random.default_rng(1)
  z1, z2 = rng.normal(size=(2, 16, 4)).astype(np.float32)
  value_and_grad = jax.jit(jax.value_and_grad(lambda a, b: losses.nt_xent(a, b, 0.2), (0, 1)))
  single = value_and_grad(z1, z2)
  split = parallel.batch_sharding(parallel.create_mesh())
  sharded = value_and_grad(jax.device_put(z1, split), jax.device_put(z2, split))
  assert len(sharded[1][0].sharding.device_set) == 8
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), sharded, single)
  per_device = np.mean([losses.nt_xent(z1[i : i + 2], z2[i : i + 2], 0.2) for i in range(0, 16, 2)])
  assert abs(per_device - float(single[0])) > 0.1


def test_distillation_gradient_is_zero_only_for_equal_logits():
  """d/ds CE(softmax(t / T), softmax(s / T)) is zero when s = t (or t + a constant per row),
  nonzero otherwise; the teacher's logits get no gradient."""
  rng = np.random.default_rng(2)
  teacher = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  grads = jax.grad(lambda s, t: jnp.sum(losses.distillation_loss(s, t, 2.0)), (0, 1))
  for student in (teacher, teacher + jnp.arange(4.0)[:, None]):
    student_grad, teacher_grad = grads(student, teacher)
    np.testing.assert_allclose(student_grad, 0.0, atol=1e-6)
    np.testing.assert_array_equal(teacher_grad, 0.0)
  assert np.abs(grads(teacher.at[0, 0].add(1.0), teacher)[0]).max() > 1e-2
  # At T = 1 it is the cross-entropy to the teacher's softmax.
  np.testing.assert_allclose(
    losses.distillation_loss(2 * teacher, teacher, 1.0),
    losses.cross_entropy(2 * teacher, jax.nn.softmax(teacher)),
    rtol=1e-6,
  )
