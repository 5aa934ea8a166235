"""Training, evaluation runs and prediction from a workdir.

``step`` (``create_model``, the one model-from-config builder; the state; the
jitted train and eval steps: public, also used by ``msrnn_jax.analysis``),
``train`` (``train_and_evaluate(config, workdir)``, the loop), ``evaluate``
(evaluation, result files, ``--mode=eval``), ``run`` (start-up, workdir lock,
signals, restore), ``losses``, ``sampling`` (scheduled sampling), ``sharding``
(meshes), ``distributed`` (multi-process start-up, config agreement, lost
peers), ``checkpointing`` (orbax, atomic, finite only, safe to read during
training), ``integrity`` (checksums, finiteness), ``summary`` (TensorBoard,
progress, divergence warning), ``workdir`` (checks, lock file),
``config_checks`` (one-line config errors), ``inference`` (``--mode=predict``) and
``context_files`` (reading its input).
May import ``backend``, ``model``, ``data`` and ``evaluation``.
"""
