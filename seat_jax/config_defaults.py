"""The base configuration that every preset in `configs/` starts from.

Values are the paper's GTA5 -> Cityscapes stage-1 setting (SPEC sections 1-7). Presets override a
few fields; the command line overrides any of them with `--config.a.b=value`. Sizes are written
as (height, width) everywhere, which is the array order; the papers quote width x height.
"""

import ml_collections

from seat_jax import models

# What `python -m seat_jax.main` can do with a config (config.mode).
MODES = ("train", "eval", "pseudo_labels", "adabn", "entropy_rank")


def get_model_config() -> ml_collections.ConfigDict:
  """DeepLabV2 / ResNet-101 with SEAT norms (SPEC sections 1-2)."""
  m = ml_collections.ConfigDict()
  m.num_classes = 19
  m.stage_sizes = models.RESNET101_STAGES  # blocks in layer1..layer4
  m.base_width = 64  # stem channels and layer1 planes; ResNet doubles it per stage
  m.aspp_branches = 4  # 2 reproduces AdaptSegNet's early-return bug (REFERENCE 1.1)
  m.aspp_dilations = (6, 12, 18, 24)
  m.norm_mode = "seat"  # shared | sat | seat
  m.bn_affine_trainable = True  # AdaptSegNet freezes the BN affine; SEAT trains it
  m.bn_train_stats = True  # normalise with batch statistics while training (reference)
  m.dtype = "float32"  # compute dtype: float32 | bfloat16; params stay float32
  m.remat = "none"  # none | blocks: recompute each bottleneck in the backward pass (memory)
  return m


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "train"  # train | eval | pseudo_labels
  c.seed = 1234
  c.model = get_model_config()

  # Data (SPEC section 5). Dataset names are the TFDS builders in data_builders/.
  c.data = ml_collections.ConfigDict()
  c.data.data_dir = ""  # TFDS data_dir; "" = the TFDS default (~/tensorflow_datasets)
  c.data.source = ml_collections.ConfigDict(dict(
      name="gta5", builder_config="original", split="train",
      resize_hw=(720, 1280), crop_hw=(512, 1024),
      # DAFormer's rare class sampling (seat_jax/rcs.py): a class drawn by its pixel frequency
      # with this temperature (DAFormer: 0.01; 0 = off, shuffled epochs), then an image with more
      # than rcs_min_pixels of it (at the stored label size; DAFormer 3000), its crop redrawn up
      # to 10 times until it holds rcs_min_crop_ratio of that (DAFormer 0.5; 0 = no redraws).
      rcs_temperature=0.0, rcs_min_pixels=3000, rcs_min_crop_ratio=0.5,
      # IntraDA stage 2 (the easy target images as "source"): only the ids listed in this file,
      # labelled from this directory instead of the stored labels. "" = whole split / stored.
      ids_file="", pseudo_label_dir=""))
  c.data.target = ml_collections.ConfigDict(dict(
      name="cityscapes", builder_config="", split="train",
      resize_hw=(512, 1024), crop_hw=(),
      ids_file="",  # only the example ids listed in this file (IntraDA: the hard split)
      pseudo_label_dir=""))  # stage 2: read target labels from this directory
  c.data.val = ml_collections.ConfigDict(dict(
      name="cityscapes", builder_config="", split="validation",
      resize_hw=(512, 1024), max_examples=0))  # 0 = the whole split
  c.data.label_space = "cityscapes19"  # cityscapes19 | synthia16: how target labels are read
  c.data.flip = False  # random horizontal flip (the references use none)
  c.data.fda_beta = 0.0  # FDA source stylisation toward target images; 0 = off
  # Grain worker processes per domain; -1 = automatic (0 on CPU, else by host cores and batch).
  c.data.worker_count = -1
  # Where resize/crop/flip/FDA/mean run: device (jitted, from uint8) | host (PIL, as references).
  c.data.preprocess_on = "device"
  c.data.prefetch_buffer_size = 2

  # Adversarial training (SPEC section 3).
  c.adv = ml_collections.ConfigDict()
  c.adv.mode = "multi_level_sum"  # none | single | multi_level_sum | two_discriminators
  c.adv.input = "softmax"  # softmax | entropy (ADVENT self-information map)
  c.adv.multi_level_lambda = 0.05  # weight of softmax(aux) in the fused map fed to D
  c.adv.weight = 0.001  # lambda_adv on the main (or fused) adversarial term
  c.adv.weight_aux = 0.0002  # two_discriminators only: the aux discriminator's weight
  c.adv.disc_width = 64

  c.loss = ml_collections.ConfigDict()
  c.loss.aux_weight = 0.1  # CE(main) + aux_weight * CE(aux)
  c.loss.entropy_weight = 0.0  # ADVENT MinEnt on target, main head; 0 = off
  c.loss.entropy_weight_aux = 0.0  # ADVENT MinEnt on the aux head (ADVENT: 0.0002)
  # FDA's robust entropy on the target's stride-8 main logits (FDA: 0.005, eta 2); 0 = off.
  c.loss.robust_entropy_weight = 0.0
  c.loss.robust_entropy_eta = 2.0
  c.loss.target_ce_weight = 1.0  # stage 2: CE on target pseudo-labels

  # Differential treatment (Wang et al. 2020): stuff classes matched to a class-wise memory of
  # source features, thing instances to an instance-wise one (layer4 features). 0 = off.
  c.differential = ml_collections.ConfigDict()
  c.differential.stuff_weight = 0.0  # published 0.01
  c.differential.thing_weight = 0.0  # published 0.01
  c.differential.stuff_bank = 50  # memory slots per stuff class
  c.differential.thing_bank = 500  # memory slots per thing class

  # Toldo et al. 2021: clustering, orthogonality and sparsity losses on layer4 features plus an
  # image-wise weighted MaxSquare entropy on the target. All 0 = off (presets set the values).
  c.clustering = ml_collections.ConfigDict()
  c.clustering.cluster = 0.0
  c.clustering.ortho = 0.0
  c.clustering.sparse = 0.0
  c.clustering.entropy = 0.0
  c.clustering.iw_ratio = 0.2  # MaxSquare's image-wise class weighting exponent (0 = uniform)

  # Mixing-based self-training with a mean teacher: DACS's ClassMix, DAFormer's feature distance,
  # MIC's masked images (README "Mixing-based self-training").
  c.mix = ml_collections.ConfigDict()
  c.mix.enabled = False
  # The norm mixed images go through: target | source | batch (their own batch statistics, the
  # mean affine, no running update; best on the synthetic shift, benchmarks/RESULTS.md).
  c.mix.norm = "batch"
  c.mix.teacher_alpha = 0.99  # EMA of the teacher (DACS 0.99; DAFormer, MIC 0.999)
  c.mix.confidence = 0.968  # pseudo-label weight = share of teacher pixels above this
  c.mix.augment = True  # colour jitter + Gaussian blur on the mixed image (DACS)
  c.mix.jitter_strength = 0.2  # colour jitter's strength (DACS 0.25, DAFormer/MIC 0.2)
  # DAFormer's pseudo-label crop: no weight on the top / bottom rows of the target crop (the
  # ego car's hood, the image border; DAFormer on GTA5: 15 / 120). 0 = none (DACS).
  c.mix.pseudo_ignore_top = 0
  c.mix.pseudo_ignore_bottom = 0
  c.mix.weight = 1.0  # CE weight of the mixed image
  c.mix.mic_weight = 0.0  # MIC: CE of the masked target image (MIC: 1.0); 0 = off
  c.mix.mic_block = 64  # MIC's masked patches: block size in pixels and share masked
  c.mix.mic_ratio = 0.7
  c.mix.fd_weight = 0.0  # DAFormer: thing-class feature distance to the initial model (0.005)

  # Optimisation (SPEC section 4).
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"  # sgd (the references) | adamw (DAFormer/MIC: lr 6e-5, decay 0.01)
  c.optim.lr = 2.5e-4
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.poly_power = 0.9
  c.optim.warmup_steps = 0  # linear warmup from 1e-6 of the lr (DAFormer: 1500); 0 = none
  c.optim.adam_b1 = 0.9  # optim.name=adamw only
  c.optim.adam_b2 = 0.999
  c.optim.head_lr_mult = 10.0
  c.optim.head_patterns = (r"^(aux_head|main_head)/",)
  c.optim.frozen_patterns = ()  # extra regexes of params that never move
  # AdaptSegNet's/ADVENT's optimiser lists each backbone weight several times (once per module
  # that encloses it) and torch.optim.SGD updates it once per listing (REFERENCE 1.6).
  c.optim.reference_duplicate_updates = False
  c.optim.disc_lr = 1e-4
  c.optim.disc_b1 = 0.9
  c.optim.disc_b2 = 0.99

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 1  # global images per domain per step
  c.train.num_steps = 150_000
  c.train.lr_horizon_steps = 250_000  # poly decay horizon (training stops earlier)
  c.train.log_every = 50
  c.train.checkpoint_every = 5000
  c.train.keep_checkpoints = 0  # 0 = keep every checkpoint (best-on-val needs them)
  c.train.eval_every = 0  # periodic target-val mIoU; 0 = off
  c.train.eval_max_examples = 100

  c.resume = ""  # a checkpoint dir to continue from when the workdir has none
  # Converted PyTorch weights (python -m seat_jax.convert) or a checkpoint dir; real-data runs
  # refuse to start without one unless it is "scratch" (random weights on purpose).
  c.init_from = ""
  # When init_from has per-domain norms (a SAT/SEAT run) and this model shares them: the domain
  # whose statistics and affine to start from (source | target); "" = refuse unless they agree.
  c.init_domain = ""

  c.eval = ml_collections.ConfigDict()
  c.eval.source_stages = ()  # layer switch: stages (0 stem, 1-4 layers) that use the source norm
  c.eval.checkpoint = ""  # eval mode: a checkpoint dir; "" = the workdir's checkpoints
  c.eval.step = -1  # -1 = every checkpoint in the dir (reports final and best); else that step
  c.eval.num_panels = 4  # input | ground truth | prediction panels written per evaluation
  c.eval.write_predictions = True  # Cityscapes labelId PNGs for cityscapesscripts
  # Eval and pseudo_labels modes: average the softmax of these runs' checkpoints (FDA's MBT)
  # instead of scoring eval.checkpoint, as "dir1,dir2,dir3" (a string: paths parse as typed);
  # weights () = equal (FDA: .3333, .3333, .3334).
  c.eval.ensemble = ""
  c.eval.ensemble_weights = ()

  c.pseudo = ml_collections.ConfigDict()
  c.pseudo.rule = "global"  # global | class_quantile
  c.pseudo.threshold = 0.9  # global rule
  c.pseudo.quantile = 0.5  # class_quantile rule (0.5 BDL median, 0.66 FDA)
  c.pseudo.cap = 0.9  # class_quantile rule: thresholds never exceed this
  c.pseudo.output_dir = ""  # "" = <workdir>/pseudo_labels
  # Which stage-1 checkpoint labels the target: final (the last saved step, or eval.step) or
  # best_on_val (the step eval mode named best in <workdir>/eval/summary.json).
  c.pseudo.checkpoint = "final"

  # AdaBN (mode adabn): target statistics of a source-only model from the target train split.
  c.adabn = ml_collections.ConfigDict()
  c.adabn.max_images = 0  # 0 = the whole split
  c.adabn.output_dir = ""  # "" = <workdir>/adabn

  # IntraDA (mode entropy_rank): rank the target train split by the stage-1 model's entropy
  # (checkpoint chosen by pseudo.checkpoint), split it easy/hard, pseudo-label the easy part.
  c.intrada = ml_collections.ConfigDict()
  c.intrada.lambda_easy = 0.67  # the easy split: the first int(N * lambda) images by score
  c.intrada.normalize = True  # IntraDA's rare-class normaliser (its published 46.3 uses it)
  c.intrada.output_dir = ""  # "" = <workdir>/entropy_rank
  return c

