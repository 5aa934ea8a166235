"""Default configuration: every key, with the paper's settings.

MS-ConvLSTM on Moving MNIST as in the paper (6 layers x 64 channels, 3x3
kernels, Adam 3e-4, global batch 4, 20 epochs, 10 -> 10 frames). The data
set configs (mmnist.py, kth.py, taxibj.py, hko7.py) start from this one.

    python -m msrnn_jax.main --config=configs/default.py --workdir=/tmp/run
"""

import ml_collections
from ml_collections import config_dict

from msrnn_jax import data


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Seed of parameter init, data order and scheduled-sampling draws.
  config.seed = 2022
  # Multi-process runs (docs/running.md): jax.distributed.initialize() is
  # called before any other JAX call when enabled. Unset (None) values are
  # detected from the cluster launcher (SLURM, Open MPI, TPU pods), as
  # jax.distributed.initialize does; set all three to launch by hand.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.enabled = False
  # host:port of process 0's coordinator service, e.g. "10.0.0.1:1234".
  config.distributed.coordinator_address = config_dict.placeholder(str)
  config.distributed.num_processes = config_dict.placeholder(int)
  # This process's index in [0, num_processes).
  config.distributed.process_id = config_dict.placeholder(int)
  # Summary writer: 'auto' (clu if TensorFlow is installed, else tensorboardX),
  # 'tensorboardx' or 'clu'.
  config.summary_backend = "auto"
  # Keep freed host memory for reuse (glibc; msrnn_jax/host_memory.py): CPU
  # steps stop page-faulting their temporaries in every step (ConvLSTM at the
  # paper's shape: ~0.9x the step time) at the price of ~2x their size in
  # resident memory. Applied by msrnn_jax.main before JAX starts.
  config.keep_freed_memory = True

  config.model = ml_collections.ConfigDict()
  # One of msrnn_jax.models.MODEL_NAMES, e.g. convlstm, ms_convlstm, ms_motionrnn.
  config.model.name = "ms_convlstm"
  # Hidden channels of every layer, number of layers, gate kernel size.
  config.model.hidden = 64
  config.model.num_layers = 6
  config.model.kernel_size = 3
  # Per-layer pyramid levels (level k = 1/2^k resolution); None = the mirror
  # pyramid for ms_* models (0,1,2,2,1,0) and all zeros for plain models.
  config.model.levels = config_dict.placeholder(tuple)
  # Skip topology: 'unet', 'none', 'unet3p', 'full'; None = the family's
  # default ('unet' for ms_* models as in the paper, 'none' for plain stacks).
  config.model.skip = config_dict.placeholder(str)
  # Rematerialisation: 'none', 'step' (each time step) or 'cell'; and the
  # jax.checkpoint_policies name it uses.
  config.model.remat = "none"
  config.model.remat_policy = "nothing_saveable"
  # nn.scan unroll factor: 1 = rolled loop (compile time independent of T);
  # >= T-1 = fully unrolled.
  config.model.scan_unroll = 1
  # Convolution: 'auto' (oneDNN on one CPU device, the matmul kernel gradient
  # on several, XLA's on GPU), 'xla', 'matmul', 'matmul_bf16', 'onednn'.
  config.model.conv_impl = "auto"
  # Compute dtype ('float32' or 'bfloat16'); params and Adam state stay float32.
  config.model.dtype = "float32"
  # 'torch' (PyTorch Conv2d defaults, as the reference) or 'flax'.
  config.model.initializer = "torch"
  # TrajGRU links L (13 in the paper-era code, 10 at the reference's HEAD).
  config.model.links = 13
  # MotionGRU filter size k and trend momentum alpha.
  config.model.motion_k = 3
  config.model.motion_alpha = 0.5

  # The data section (see msrnn_jax/data/config.py and docs/data.md).
  config.data = data.default_config()

  config.train = ml_collections.ConfigDict()
  # Global batch (split over all devices; the paper: 1 per GPU x 4 GPUs).
  config.train.batch_size = 4
  # Training length: num_steps (>= 1), or -1 for `epochs` passes over the
  # training set.
  config.train.epochs = 20
  config.train.num_steps = -1
  # Adam, constant learning rate, no clipping, no weight decay (reference).
  config.train.learning_rate = 3e-4
  # Scheduled sampling: 'auto' (reverse for predrnn_v2, else linear),
  # 'linear' (truth probability 1 -> 0 over the run), 'reverse', 'none'
  # (always truth in training).
  config.train.scheduled_sampling = "auto"
  # Weight of PredRNN-V2's decoupling loss.
  config.train.decouple_weight = 0.01
  # Log train metrics, run validation, save checkpoints every N steps
  # (eval_every_steps <= 0: once per epoch); keep the newest
  # keep_checkpoints (>= 1) checkpoints.
  config.train.log_every_steps = 50
  config.train.eval_every_steps = -1
  config.train.checkpoint_every_steps = 1000
  config.train.keep_checkpoints = 3
  # Examples used by the periodic validation (-1 = the whole split).
  config.train.eval_examples = -1

  config.eval = ml_collections.ConfigDict()
  # Global evaluation batch (must divide by the device count).
  config.eval.batch_size = 4
  # Split of the final evaluation, and an optional cap on its examples (-1 = all).
  config.eval.split = "test"
  config.eval.max_examples = -1
  # Sequences shown in the prediction grid and TensorBoard images.
  config.eval.num_visualize = 4
  return config
