"""Default configuration: every key, with the paper's settings.

MS-ConvLSTM on Moving MNIST as in the paper (6 layers x 64 channels, 3x3
kernels, Adam 3e-4, global batch 4, 20 epochs, 10 -> 10 frames). The data
set configs (mmnist.py, kth.py, taxibj.py, hko7.py) start from this one
(``from configs import default``: run from the repository root, as
``python -m msrnn_jax.main`` is). Plain data: no import of msrnn_jax.

    python -m msrnn_jax.main --config=configs/default.py --workdir=/tmp/run
"""

import ml_collections
from ml_collections import config_dict


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
  # Seconds any wait on another process may last (start-up, a lost peer):
  # past it every process ends with exit status 76 (requeue).
  config.distributed.timeout_s = 60
  # Summary writer: 'auto' (clu if TensorFlow is installed, else tensorboardX),
  # 'tensorboardx' or 'clu'.
  config.summary_backend = "auto"

  # The platform seam (msrnn_jax/backend): how fast, with how much host
  # memory; results agree to float rounding whatever is chosen.
  config.backend = ml_collections.ConfigDict()
  # The model's convolution kernel: 'auto' (oneDNN on CPU where the
  # msrnn_jax[cpu] extra is installed, else the portable matmul gradients; XLA's
  # own on GPU/TPU; decided once, when the model is built), 'xla', 'matmul',
  # 'matmul_bf16', 'onednn'.
  config.backend.conv_impl = "auto"
  # TrajGRU's and MotionRNN's flow warp: 'auto' (native C++ loops on CPU
  # where a C++ compiler is found, else XLA's gathers and scatters), 'xla',
  # 'native'.
  config.backend.warp_impl = "auto"
  # Keep freed host memory for reuse (glibc; msrnn_jax/backend/allocator.py):
  # CPU steps stop page-faulting their temporaries in every step (ConvLSTM at
  # the paper's shape: ~0.9x the step time); one step's temporaries stay
  # resident between steps. Applied by msrnn_jax.main before JAX starts, in
  # a process it restarts once with glibc's per-thread cache off.
  config.backend.keep_freed_memory = True

  config.model = ml_collections.ConfigDict()
  # One of msrnn_jax.MODEL_NAMES, e.g. convlstm, ms_convlstm, ms_motionrnn
  # (or an alias: ms_lstm = ms_mk_lstm).
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
  # Rematerialisation: 'none', 'step' (each time step) or 'cell'; 'auto' =
  # 'none' when a training step fits 80% of the memory available at start,
  # else 'step' (msrnn_jax/training/memory_fit.py); and the
  # jax.checkpoint_policies name it uses.
  config.model.remat = "auto"
  config.model.remat_policy = "nothing_saveable"
  # The time loop's unroll factor: 1 = rolled (compile time independent of T),
  # >= T-1 = fully unrolled (compile time grows with T); 'auto' = fully unrolled
  # for the families that gain from it, without remat, where the state maps are
  # as large as at the paper's shape; else rolled (docs/model.md).
  config.model.scan_unroll = "auto"
  # Compute dtype ('float32', 'bfloat16', or 'auto': bfloat16 where the model's
  # convolution kernel has native bfloat16 kernels, float32 elsewhere, decided when
  # the model is built; the CPU-sized presets use it, docs/performance.md); params
  # and Adam state stay float32.
  config.model.dtype = "float32"
  # 'torch' (PyTorch Conv2d defaults, as the reference) or 'flax'.
  config.model.initializer = "torch"
  # The families' own options (each cell declares them with these defaults;
  # tests/test_models.py checks this list against the registry).
  # TrajGRU links L (13 in the paper-era code, 10 at the reference's HEAD).
  config.model.links = 13
  # MotionGRU filter size k and trend momentum alpha.
  config.model.motion_k = 3
  config.model.motion_alpha = 0.5
  # CMS-LSTM's context-embedding and MoDeRNN's detail-context rounds.
  config.model.ce_iters = 5
  # PrecipLSTM's local-attention window side.
  config.model.attention_window = 30

  # The data section (docs/data.md). The data-set configs set a data set's
  # reference shapes (msrnn_jax/data/registry.py; tests check they agree).
  config.data = ml_collections.ConfigDict()
  # Which data set: 'mmnist' | 'kth' | 'taxibj' | 'hko7' | 'sequences' (your own files in
  # manual_dir) | 'synthetic'.
  config.data.name = "mmnist"
  # Where the prepared tfds ArrayRecord data are written (one sub-folder per builder config).
  config.data.data_dir = "./data/tfds"
  # Raw files placed by hand; '' means <data_dir>/downloads/manual.
  config.data.manual_dir = ""
  # Input and predicted frames per training example.
  config.data.in_len = 10
  config.data.out_len = 10
  # Predicted frames at evaluation (None = out_len); the paper's KTH protocol uses 20.
  config.data.eval_out_len = config_dict.placeholder(int)
  # Frame side in pixels (frames are square). Resized where the data set allows
  # (Moving MNIST, KTH, HKO-7); TaxiBJ must be 32.
  config.data.image_size = 64
  # Channels per frame; must match the data (TaxiBJ 'both' = 2, everything else 1).
  config.data.channels = 1
  # Resampling: 'bilinear' (2x2 taps like cv2.resize, as the reference) or 'antialias' (PIL).
  config.data.resize_method = "bilinear"

  # Moving MNIST. Digit source: 'auto' (MNIST idx files in manual_dir if both are there,
  # else scikit-learn's bundled 8x8 digits), 'sklearn', 'idx', or 'npy' (a fixed
  # (20, N, 64, 64) file such as the canonical mnist_test_seq.npy).
  config.data.mmnist_digits = "auto"
  # Sequences generated for train and test (ignored for 'npy').
  config.data.mmnist_num_train = 10000
  config.data.mmnist_num_test = 2000
  # Seed of the sequence generator (sequence i of a split depends only on this and i).
  config.data.mmnist_seed = 0
  # Share of the sklearn digit pool (or of the .npy sequences) used for training.
  config.data.mmnist_train_fraction = 0.7
  # File name of the fixed sequences in manual_dir for mmnist_digits='npy'.
  config.data.mmnist_npy_file = "mnist_test_seq.npy"

  # TaxiBJ. Year files BJ<yy>_M32x32_T30_InOut.h5 to read (comma-separated yy).
  config.data.taxibj_years = "13,14,15,16"
  # 'both' (inflow and outflow, C=2) or 'inflow' (C=1, as the reference trains).
  config.data.taxibj_channels = "both"
  # True reproduces the reference's clips [t-30min, t-60min, ..., t-240min] (newest first).
  config.data.taxibj_reverse_time = False
  # The last this-many windows form the test set (1344 = 4 weeks of half-hours).
  config.data.taxibj_num_test = 1344

  # KTH. 'all' six classes or 'run_jog_walk' (the reference's KTH_Only).
  config.data.kth_classes = "all"
  # Window strides: train; test for running/jogging; test for the other classes (paper §V-D).
  config.data.kth_train_stride = 1
  config.data.kth_test_stride_fast = 3
  config.data.kth_test_stride_slow = 20
  # Optional MCnet-style lists "personXX_class_dY start end" restricting windows to those
  # frame ranges (paths; '' = whole videos, persons 1-16 train and 17-25 test).
  config.data.kth_train_list = ""
  config.data.kth_test_list = ""

  # HKO-7. Day lists (text files, one YYYYMMDD per line; '' = unused) and date ranges
  # ('YYYYMMDD-YYYYMMDD'; '' = unused). A day goes to test if listed/in range there, else
  # to validation, else to train.
  config.data.hko_train_days = ""
  config.data.hko_valid_days = ""
  config.data.hko_test_days = ""
  config.data.hko_train_range = "20090101-20141231"
  config.data.hko_valid_range = ""
  config.data.hko_test_range = "20150101-20151231"
  # Radar scans (6 minutes apart) between frames of a sequence: 1 = 6 min (2022 reference),
  # 6 = 36 min (reference HEAD).
  config.data.hko_interval = 1
  # Scans between the starts of consecutive sequences; 0 = non-overlapping (reference).
  config.data.hko_stride = 0
  # Apply the HKO .mask files (zeroing invalid pixels) when they are present.
  config.data.hko_use_mask = True
  # Folder holding the .mask files mirroring the PNG tree; '' = next to each PNG, or
  # <manual_dir>/radarPNG_mask when that exists.
  config.data.hko_mask_dir = ""

  # Synthetic moving shapes (name='synthetic'); shapes come from in_len/out_len/
  # eval_out_len/image_size/channels, the style from synthetic_like:
  # 'mmnist' | 'kth' | 'taxibj' | 'hko7' | 'blobs'.
  config.data.synthetic_like = "mmnist"
  config.data.synthetic_num_train = 256
  config.data.synthetic_num_test = 64
  config.data.synthetic_seed = 0

  # Your own sequences (name='sequences'): .npy/.npz/.h5 arrays, videos, GIFs or folders of
  # frames in manual_dir (docs/data.md). The array to read in .npz/.h5 files ('' = the only one).
  config.data.sequences_key = ""
  # Channels: 'auto' (as stored; RGB(A) -> grey for channels=1), 'grey', or indices '0,2'.
  config.data.sequences_channels = "auto"
  # Frames to image_size squares: 'crop' (central square, then resize) or 'resize' (stretch).
  config.data.sequences_fit = "crop"
  # Frames between the starts of consecutive clips: training; validation/test (0 = one clip).
  config.data.sequences_stride = 1
  config.data.sequences_eval_stride = 0
  # Split lists: comma-separated file names or patterns ('*.mp4'); unlisted files train
  # when sequences_train is ''. With no list, whole files are split by these fractions,
  # shuffled with sequences_seed (a lone many-sequence file: its sequences).
  config.data.sequences_train = ""
  config.data.sequences_valid = ""
  config.data.sequences_test = ""
  config.data.sequences_valid_fraction = 0.0
  config.data.sequences_test_fraction = 0.2
  config.data.sequences_seed = 0

  config.train = ml_collections.ConfigDict()
  # Global batch (split over all devices; the paper: 1 per GPU x 4 GPUs).
  config.train.batch_size = 4
  # Training length: num_steps (>= 1), or -1 for `epochs` passes over the
  # training set.
  config.train.epochs = 20
  config.train.num_steps = -1
  # Adam, constant learning rate, no clipping, no weight decay (reference).
  config.train.learning_rate = 3e-4
  # Scheduled sampling: 'auto' (the model family's: reverse for predrnn_v2,
  # else linear), 'linear' (truth probability 1 -> 0 over the run), 'reverse',
  # 'none' (always truth in training).
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
