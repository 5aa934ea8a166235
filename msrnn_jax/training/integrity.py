"""What makes a restored state trustworthy: finite values and the checksums of its arrays.

``checksums`` is recorded in every checkpoint's ``meta`` when it is saved and
``verify`` compares it after a restore, so bytes changed in place (same size,
still readable) are found; orbax checksums only the index of its zarr shards,
not the data. ``all_finite`` keeps non-finite states out of checkpoints and
non-finite checkpoints out of a resumed run.
"""

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def all_finite(tree: Any) -> bool:
  """Whether every float leaf of ``tree`` is free of NaN and Inf (one jitted reduction)."""
  return bool(_all_finite(tree))


def checksums(tree: Any) -> dict[str, str]:
  """SHA-256 of each leaf's bytes (this process's copy), keyed by its path in ``tree``.

  The state is replicated, so the first addressable shard of a leaf is all of it.
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    host = np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)
    out[jax.tree_util.keystr(path)] = hashlib.sha256(np.ascontiguousarray(host).data).hexdigest()
  return out


def verify(state: Any, meta: dict[str, Any]) -> None:
  """Raises ``ValueError`` naming the first array whose bytes differ from the saved checksum."""
  saved = meta.get("checksums")
  if saved is None:  # written before checksums were recorded
    return
  for key, digest in checksums(state).items():
    if saved.get(key) != digest:
      raise ValueError(f"checksum mismatch in {key or 'the state'}: its files were changed "
                       "after saving")
