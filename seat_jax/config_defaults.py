"""The base configuration that every preset in `configs/` starts from.

Values are the paper's GTA5 -> Cityscapes stage-1 setting. Presets override a few fields; the
command line overrides any of them with `--config.a.b=value`. Sizes are written as (height,
width) everywhere, which is the array order; the papers quote width x height.
"""

import ml_collections

from seat_jax import methods
from seat_jax import models

# What `python -m seat_jax.main` can do with a config (config.mode): one part, or a recipe of
# parts that resumes where it stopped (`seat_jax.recipes`).
PARTS = ("train", "eval", "pseudo_labels", "entropy_rank")
RECIPES = ("pipeline", "fda_rounds", "intrada", "adabn")
MODES = PARTS + RECIPES


def get_model_config() -> ml_collections.ConfigDict:
  """DeepLabV2 / ResNet-101 with SEAT norms, or SegFormer (MiT-B5 with DAFormer's decoder)."""
  m = ml_collections.ConfigDict()
  m.name = "deeplabv2"  # deeplabv2 | segformer (docs/segformer.md)
  m.num_classes = 19  # output classes: 19 (Cityscapes); 16 for the SYNTHIA protocol
  m.stage_sizes = models.RESNET101_STAGES  # blocks in layer1..layer4
  m.base_width = 64  # stem channels and layer1 planes; ResNet doubles it per stage
  m.aspp_branches = 4  # 2: AdaptSegNet's code sums only 2 (its released models)
  m.aspp_dilations = (6, 12, 18, 24)  # dilation of each ASPP branch (DeepLabV2)
  m.norm_mode = "seat"  # shared | sat | seat
  m.bn_affine_trainable = True  # AdaptSegNet freezes the BN affine; SEAT trains it
  m.bn_train_stats = True  # normalise with batch statistics while training (reference)
  m.dtype = "float32"  # compute dtype: float32 | bfloat16; params stay float32
  m.remat = "none"  # none | blocks: recompute each bottleneck/MiT block in the backward pass
  # DeepLabV2's ResNet: caffe (AdaptSegNet's DeepLab, 7x7 stem) | v1c (mmseg's deep stem, the
  # stride on the 3x3 conv, half-pixel logit resize: DAFormer's and MIC's DeepLabV2)
  m.resnet_variant = "caffe"  # caffe: AdaptSegNet's DeepLab | v1c: mmseg's (DAFormer/MIC DLv2)
  # What the DeepLabV2 weights expect; the model maps the project's input to it (SegFormer: always
  # imagenet). caffe: BGR minus the Caffe mean, no std; imagenet: RGB, ImageNet mean/std.
  m.input_normalisation = "caffe"  # input the weights expect: caffe | imagenet (RGB mean/std)
  # SegFormer only (model.name=segformer); the norm, dtype and remat fields above apply to it.
  # The encoder defaults to mmseg's mit_b5 (models.mit_config gives b0..b5).
  m.mit = ml_collections.ConfigDict()
  mit_b5 = models.mit_config("b5")
  m.mit.embed_dims = mit_b5["embed_dims"]  # channels of the four MiT stages
  m.mit.depths = mit_b5["depths"]  # transformer blocks per stage
  m.mit.num_heads = mit_b5["num_heads"]  # attention heads per stage
  m.mit.sr_ratios = mit_b5["sr_ratios"]  # spatial reduction of keys/values per stage
  m.mit.mlp_ratio = 4  # Mix-FFN hidden width / stage width
  m.mit.drop_path_rate = 0.1  # stochastic depth, linear over all blocks (MixVisionTransformer)
  m.mit.layer_norm_eps = 1e-6  # as mmseg's mit_b* (Hugging Face's port: 1e-5)
  m.decoder = ml_collections.ConfigDict()
  # daformer (DAFormer's separable-ASPP fusion) | segformer (the all-MLP head)
  m.decoder.name = "daformer"
  m.decoder.channels = 256  # fusion width (SegFormer's all-MLP head: 768 for B2-B5, 256 B0/B1)
  m.decoder.embed_dims = 256  # per-stage embedding width before the fusion
  m.decoder.dilations = (1, 6, 12, 18)  # DAFormer's ASPP dilations
  m.decoder.dropout = 0.1  # channel dropout before the classifier
  return m


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "train"  # train|eval|pseudo_labels|entropy_rank, or pipeline|fda_rounds|intrada|adabn
  c.seed = 1234  # initialisation, data order and augmentation draws
  c.model = get_model_config()

  # Data. Dataset names are the TFDS builders in data_builders/.
  c.data = ml_collections.ConfigDict()
  c.data.data_dir = ""  # TFDS data_dir; "" = the TFDS default (~/tensorflow_datasets)
  c.data.source = ml_collections.ConfigDict(dict(
      name="gta5",  # the labelled source dataset (a builder in data_builders/)
      builder_config="original",  # which build of it (prepare_data --builder_config)
      split="train",  # which split
      resize_hw=(720, 1280),  # images (and labels) resized to this before cropping
      crop_hw=(512, 1024),  # random crop after the resize; () = the whole resized image
      # mmseg's RandomCrop (DAFormer: 0.75): redraw a crop (at most 10 times) while one class
      # covers this share of its labelled pixels or it holds one class. 1.0 = off.
      cat_max_ratio=1.0,  # redraw crops one class covers this much of (DAFormer 0.75); 1 = off
      # DAFormer's rare class sampling (seat_jax/rcs.py): a class drawn by its pixel frequency,
      # then an image with enough of it, its crop redrawn until it holds enough of that.
      rcs_temperature=0.0,  # rare class sampling temperature (DAFormer 0.01); 0 = off
      rcs_min_pixels=3000,  # rare class sampling: class pixels an image needs (stored size)
      rcs_min_crop_ratio=0.5,  # rare class sampling: share of them a crop must keep; 0 = any
      # IntraDA stage 2 (the easy target images as "source"): only the ids listed in this file,
      # labelled from this directory instead of the stored labels. "" = whole split / stored.
      ids_file="",  # only the example ids listed in this file (IntraDA: the easy split)
      pseudo_label_dir=""))  # labels from this folder instead of the stored ones (IntraDA)
  c.data.target = ml_collections.ConfigDict(dict(
      name="cityscapes",  # the unlabelled target dataset
      builder_config="",  # which build of it; "" = the builder's default
      split="train",  # which split
      resize_hw=(512, 1024),  # images resized to this
      crop_hw=(),  # random crop after the resize; () = none
      ids_file="",  # only the example ids listed in this file (IntraDA: the hard split)
      pseudo_label_dir=""))  # stage 2: read target labels from this directory
  c.data.val = ml_collections.ConfigDict(dict(
      name="cityscapes",  # the dataset evaluation scores on
      builder_config="",  # which build of it; "" = the builder's default
      split="validation",  # which split
      resize_hw=(512, 1024),  # images go into the model at this size
      max_examples=0))  # evaluate on the first N images; 0 = the whole split
  c.data.label_space = "cityscapes19"  # cityscapes19 | synthia16 | synthia19 (FDA's SYNTHIA)
  c.data.flip = False  # random horizontal flip (the references use none)
  c.data.fda_beta = 0.0  # FDA source stylisation toward target images; 0 = off
  c.data.blur_probability = 0.0  # Gaussian blur, sigma U(0, 1) px, source and target (Toldo: 0.5)
  # Grain worker processes per domain; -1 = automatic (0 on CPU, else by host cores and batch).
  c.data.worker_count = -1
  # Where resize/crop/flip/FDA/mean run: device (jitted, from uint8) | host (PIL, as references).
  c.data.preprocess_on = "device"
  c.data.prefetch_buffer_size = 2  # grain read-ahead buffer of each input stream

  # Adversarial training.
  c.adv = ml_collections.ConfigDict()
  c.adv.mode = "multi_level_sum"  # none | single | multi_level_sum | two_discriminators
  c.adv.input = "softmax"  # softmax | entropy (ADVENT self-information map)
  c.adv.multi_level_lambda = 0.05  # weight of softmax(aux) in the fused map fed to D
  c.adv.weight = 0.001  # lambda_adv on the main (or fused) adversarial term
  c.adv.weight_aux = 0.0002  # two_discriminators only: the aux discriminator's weight
  c.adv.disc_width = 64  # channels of the discriminator's first layer (AdaptSegNet: 64)

  c.loss = ml_collections.ConfigDict()
  c.loss.aux_weight = 0.1  # CE(main) + aux_weight * CE(aux)
  c.loss.ce_normalise = "valid"  # source CE mean over: valid (labelled) | all pixels (mmseg)

  # Optimisation (the paper's section 4.3).
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"  # sgd (the references) | adamw (DAFormer/MIC: lr 6e-5, decay 0.01)
  c.optim.lr = 2.5e-4  # segmenter learning rate (backbone; heads x head_lr_mult)
  c.optim.momentum = 0.9  # SGD momentum
  c.optim.weight_decay = 5e-4  # L2 weight decay (SGD) or decoupled decay (AdamW)
  c.optim.poly_power = 0.9  # lr * (1 - step / train.lr_horizon_steps) ** poly_power
  c.optim.warmup_steps = 0  # linear warmup from 1e-6 of the lr (DAFormer: 1500); 0 = none
  c.optim.adam_b1 = 0.9  # AdamW beta1 (optim.name=adamw only)
  c.optim.adam_b2 = 0.999  # AdamW beta2 (optim.name=adamw only)
  c.optim.adam_eps = 1e-8  # added to sqrt(v) (torch.optim.AdamW's and mmseg's default)
  c.optim.head_lr_mult = 10.0  # learning-rate multiplier of the head parameters
  # regexes of the head parameters' paths
  c.optim.head_patterns = (r"^(aux_head|main_head|decode_head)/",)
  c.optim.frozen_patterns = ()  # extra regexes of params that never move
  # Regexes of params without weight decay (mmseg's decay_mult 0: DAFormer's MiT LayerNorms).
  c.optim.no_decay_patterns = ()
  # AdaptSegNet's/ADVENT's optimiser lists each backbone weight several times (once per module
  # that encloses it) and torch.optim.SGD updates it once per listing.
  c.optim.reference_duplicate_updates = False
  c.optim.disc_lr = 1e-4  # discriminator Adam learning rate (poly decay as the segmenter's)
  c.optim.disc_b1 = 0.9  # discriminator Adam beta1
  c.optim.disc_b2 = 0.99  # discriminator Adam beta2

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 1  # global images per domain per step
  c.train.num_steps = 150_000  # training stops after this step
  c.train.lr_horizon_steps = 250_000  # poly decay horizon (training stops earlier)
  c.train.log_every = 50  # steps between progress lines and TensorBoard scalars
  c.train.checkpoint_every = 5000  # steps between checkpoints (the last step is always saved)
  c.train.keep_checkpoints = 0  # 0 = keep every checkpoint (best-on-val needs them)
  c.train.eval_every = 0  # periodic target-val mIoU; 0 = off
  c.train.eval_max_examples = 100  # periodic evaluation: first N validation images
  # DeepLabV2: source and target images through the segmenter as one interleaved batch, each
  # half with its own domain's norms: the same numbers as two passes, 35-38 % fewer GPU kernels;
  # GPU memory -17 % (H100/H200) to +31 % (V100), speed not measured yet (docs/benchmarks.md).
  # Ignored where a method runs passes between the two (DACS, DAFormer, MIC) and for SegFormer.
  c.train.joint_pass = False  # source + target in one segmenter pass (DeepLabV2); False = two

  c.resume = ""  # a checkpoint dir to continue from when the workdir has none
  # Converted PyTorch weights (python -m seat_jax.convert) or a checkpoint dir; real-data runs
  # refuse to start without one unless it is "scratch" (random weights on purpose).
  c.init_from = ""  # segmenter init: converted weights or a run; "scratch" = random
  # When init_from has per-domain norms (a SAT/SEAT run) and this model shares them: the domain
  # whose statistics and affine to start from (source | target); "" = refuse unless they agree.
  c.init_domain = ""  # source | target: the domain a shared-norm model takes from a SEAT init

  c.eval = ml_collections.ConfigDict()
  c.eval.source_stages = ()  # layer switch: stages (0 stem, 1-4 layers) that use the source norm
  c.eval.checkpoint = ""  # eval mode: a checkpoint dir; "" = the workdir's checkpoints
  c.eval.step = -1  # -1 = every checkpoint in the dir (reports final and best); else that step
  # Predictions are upsampled to the labels; DACS and Toldo et al. score them at 512x1024.
  c.eval.label_hw = ()  # (h, w) to nearest-resize val labels to; () = full size (the paper)
  c.eval.num_panels = 4  # input | ground truth | prediction panels written per evaluation
  c.eval.write_predictions = True  # Cityscapes labelId PNGs for cityscapesscripts
  # Eval and pseudo_labels modes: average the softmax of these runs' checkpoints (FDA's MBT)
  # instead of scoring eval.checkpoint, as "dir1,dir2,dir3" (a string: paths parse as typed);
  # weights () = equal (FDA: .3333, .3333, .3334).
  c.eval.ensemble = ""  # "dir1,dir2,...": score the mean softmax of these runs (FDA's MBT)
  c.eval.ensemble_weights = ()  # one weight per eval.ensemble run; () = equal

  c.pseudo = ml_collections.ConfigDict()
  c.pseudo.rule = "global"  # global | class_quantile
  c.pseudo.threshold = 0.9  # global rule
  c.pseudo.quantile = 0.5  # class_quantile rule (0.5 BDL median, 0.66 FDA)
  c.pseudo.cap = 0.9  # class_quantile rule: thresholds never exceed this
  c.pseudo.output_dir = ""  # "" = <workdir>/pseudo_labels
  # Which stage-1 checkpoint labels the target: final (the last saved step, or eval.step) or
  # best_on_val (the step eval mode named best in <workdir>/eval/summary.json).
  c.pseudo.checkpoint = "final"

  # Each method's entries (loss weights, `mix`, `differential`, `clustering`, `fda`, `adabn`,
  # `intrada`) come from its own module under seat_jax/methods/.
  methods.add_config(c)
  return c

