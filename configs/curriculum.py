r"""RewardMap: supervised warm start, then curriculum GRPO with the RewardMap reward.

Presets (`--config configs/curriculum.py:PRESET`):

* `tiny` (default): a tiny Qwen2.5-VL-shaped model on the built-in procedural map world; the whole
  method (RewardMap reward, curriculum) end to end on a 2-core laptop CPU. Its perception tasks
  learn; route planning does not at this scale (docs/training.md).

    python -m rewardmap_jax.main --config configs/curriculum.py --workdir runs/tiny

* `route`: route planning learning on a 2-core CPU (the README's demo): the tiny model on the
  `route_grid` map world, a warm start half on plans, then GRPO with the sparse correctness
  reward from perception to planning (docs/planning.md).

    python -m rewardmap_jax.main --config configs/curriculum.py:route --workdir runs/route

* `qwen2_5_vl_3b`, `qwen2_5_vl_7b`: the real policy with the official hyperparameters
  (arXiv 2510.02240, github.com/fscdc/RewardMap; docs/grpo.md), real weights and ReasonMap
  data from local paths.

    python -m rewardmap_jax.main --config configs/curriculum.py:qwen2_5_vl_7b \
      --config.model.hf_dir=/data/Qwen2.5-VL-7B-Instruct \
      --config.data.reasonmap_train_dir=/data/ReasonMap-Train --workdir /mnt/nfs/rewardmap-7b

Any key can be overridden on the command line, e.g. `--config.rl.num_generations=8`.
"""

from __future__ import annotations

import ml_collections as mlc

PRESETS = ("tiny", "route", "qwen2_5_vl_3b", "qwen2_5_vl_7b")


def _reward_config() -> mlc.ConfigDict:
    """RewardMap reward, official code defaults ([RW] reason_map.py, mode difficulty_aware)."""
    r = mlc.ConfigDict()
    r.fn = "rewardmap"  # a registered name, or `path/to/file.py:fn` for a user reward
    r.mode = "difficulty_aware"  # or "baseline": weight 1, no detail reward (sparse baseline)
    r.correct = 10.0
    r.detail_weight = 0.5
    r.detail_cap = 10.0
    r.map_weights = mlc.ConfigDict({"easy": 1.0, "middle": 1.2, "hard": 1.5})
    r.transfer_bonus = 0.5  # planning questions with >0 transfers
    r.format_weight = 0.0  # the paper's explicit format term; 0 = official code (implicit format)
    r.counting1_detail = False  # the disabled Counting1 stop-list reward
    # Detail-reward constants of the official code (rewardmap_jax/rewards/reward.py).
    r.endpoint_credit = 2.0  # first departure and last arrival right
    r.route_credit_direct = 4.0  # 0-transfer question: the line holds both endpoints
    r.route_credit_transfer = 3.0  # question with transfers: the line exists
    r.transfer_credit = 1.0  # correct transfer station, section index < transfer count
    r.extra_section_penalty = 5.0  # each section with index >= transfer count + allowance
    # 0 = official (a plan's last section always pays the penalty); 1 = only sections beyond the
    # transfers + 1 a plan needs: a deviation that removes the official rule's traps for a weak
    # policy (docs/rewards.md).
    r.extra_section_allowance = 0
    r.counting1_step = 0.5  # Counting1 stop list: +/- per stop
    # Official-code switches (docs/rewards.md): the official "baseline" mode keeps the detail
    # reward; ours drops it unless asked. Arrival field: "remainder" = official text after
    # "Arrival Stop:" (long-template answers then never match), "line" = first line only,
    # "auto" = "line" for long-template records and "remainder" for short ones.
    r.baseline_keeps_detail = False
    r.arrival_field = "remainder"
    r.format_require_think = False  # format term also needs a <think>...</think> block
    r.think_open = "<think>"
    r.think_close = "</think>"
    # Fixed widths of the device reward (compiles once per bucket combination).
    r.max_sections = 16  # sections past this: -5 penalty each, no credit, never correct
    r.max_stops = 32  # Counting1 stops past this count as wrong
    r.station_buckets = (64, 256, 1024, 4096)  # stations per record (cleaned names)
    r.line_buckets = (8, 32, 128)  # lines per record
    r.min_record_bucket = 8  # distinct records per batch, rounded up to a power of two
    return r


def _rl_config() -> mlc.ConfigDict:
    """GRPO: EasyR1/verl defaults as RewardMap's training scripts override them (docs/grpo.md)."""
    rl = mlc.ConfigDict()
    rl.num_generations = 4
    rl.temperature = 1.0
    rl.top_p = 1.0
    rl.top_k = 0  # 0 = off
    rl.max_new_tokens = 2048
    rl.adv_scaling = "group"  # group | batch | none (Dr. GRPO)
    rl.adv_eps = 1e-6
    rl.clip_low = 0.2
    rl.clip_high = 0.2
    rl.dual_clip = 0.0  # 0 = off; DAPO/verl use 3.0
    rl.kl_coef = 1e-2
    rl.kl_estimator = "k3"  # k1 | k2 | k3 (low_var_kl)
    rl.entropy_coef = 1e-3
    rl.loss_agg = "token-mean"  # token-mean | seq-mean-token-mean | seq-sum-token-mean
    rl.ppo_epochs = 1
    rl.mini_batch_size = 16  # prompts per optimizer update
    rl.grad_accum = 1
    rl.dynamic_sampling = False
    rl.dynamic_sampling_max_rounds = 3
    rl.logp_mismatch_alarm = 0.05
    # rl/grpo.py GRPOLossConfig and friends
    rl.policy_loss = "grpo"  # grpo (token ratios) | gspo (sequence ratios, arXiv 2507.18071)
    rl.adv_std_ddof = 1  # unbiased group std, as torch.std in verl/EasyR1
    rl.log_ratio_clamp = 20.0  # |logp - old_logp| clamp before exp
    rl.kl_clamp = 10.0  # per-token KL clamp (verl low_var_kl); 0 = off
    rl.norm_len = 0  # seq-sum-token-mean divisor; 0 = max_new_tokens (static T)
    rl.logprob_chunk = 256  # positions per LM-head call when computing log-probs
    # Truncated importance sampling (0 = off; TRL/verl use 2): the learner recomputes the old
    # log-probs and weights each token's policy loss by min(p_learner / p_sampler, tis_cap).
    rl.tis_cap = 0.0
    # DAPO soft overlong punishment (arXiv 2503.14476): the reward falls linearly to
    # -overlong_penalty over the last overlong_buffer tokens before max_new_tokens (0 = off).
    rl.overlong_buffer = 0
    rl.overlong_penalty = 1.0
    # Sequences of the log-prob and update passes (model/sequence.py): "shared" runs each
    # prompt once per group, [prompt | c_1 | ... | c_G]; "repeated" G rows [prompt | c_g].
    rl.sequence_layout = "shared"
    rl.stop_ids = ()  # () = the model's eos (<|im_end|>)
    return rl


def _optim_config() -> mlc.ConfigDict:
    o = mlc.ConfigDict()
    o.lr = 1e-6
    o.schedule = "constant"  # constant | warmup_cosine
    o.warmup_steps = 0
    o.min_lr_ratio = 0.0
    o.weight_decay = 1e-2
    o.b1 = 0.9
    o.b2 = 0.999
    o.grad_clip = 1.0
    o.freeze_vision = False
    # param paths (re.search on "a/b/c") frozen when freeze_vision
    o.frozen_regex = r"(^|/)(visual|vision_tower|vision)(/|$)"
    o.eps = 1e-8
    # Training bf16/fp16 params is refused (trainer.check_config): with lr 1e-6 one AdamW step
    # changes ~2% of N(0, 0.02) bf16 weights (the rest round back); keep fp32 master weights
    # and set model.compute_dtype instead. True = train them anyway.
    o.allow_low_precision_params = False
    return o


def _checkpoint_config() -> mlc.ConfigDict:
    """Orbax checkpoints in `<workdir>/checkpoints` (the official run saves every 100 steps)."""
    ck = mlc.ConfigDict()
    ck.every_steps = 100
    ck.keep = 3  # the last K complete checkpoints are kept
    ck.async_save = True  # write in a background thread while training goes on
    ck.save_on_preemption = True  # SIGTERM: save at the next step boundary, then exit cleanly
    return ck


def _log_config() -> mlc.ConfigDict:
    """Metrics (`metrics.jsonl`, TensorBoard), progress bar, plots and the rollout gallery."""
    lg = mlc.ConfigDict()
    lg.every_steps = 1
    lg.tensorboard = True
    lg.progress_bar = True
    lg.gallery_every_steps = 50  # 0 = off; writes `gallery/step_<N>.html`
    lg.gallery_questions = 8  # questions per gallery page (each with its G completions)
    lg.plot_at_end = True  # `plots/curves.png` when the run finishes
    return lg


def _eval_config() -> mlc.ConfigDict:
    """Evaluation (rewardmap_jax/evaluation/; docs/evaluation.md): inside training on the
    configured data (`data.source`: the map world's `split` maps, or the held-out files of the
    ReasonMap / ReasonMap-Plus directories), and `python -m rewardmap_jax.evaluate`. Greedy
    decoding always."""
    ev = mlc.ConfigDict()
    ev.every_steps = 0  # 0 = only at the end of training
    ev.batch_size = 16  # questions per generation batch (batches grouped by map size)
    ev.max_new_tokens = 2048  # the official ReasonMap evaluation's limit
    ev.split = "val"  # map world: split never used for training; real data: held-out files
    ev.tasks = ("TorF1", "TorF2", "Counting1", "Counting2", "Counting3", "planning")
    # Map world: questions generated per task type; real data: a cap per task type, 0 = all.
    ev.questions_per_task = 1024  # warm-start and final evaluations (SE ~1.5 pts at p=.5)
    ev.periodic_questions_per_task = 128  # evaluations every `every_steps`
    ev.at_sft_end = True  # evaluate the warm-start model (only when sft.steps > 0)
    ev.final = True  # evaluate when training ends
    return ev


def _sft_config() -> mlc.ConfigDict:
    """Supervised warm start on reference answers before RL (rewardmap_jax/rl/trainer.py).

    A randomly initialised model cannot be rewarded into the answer format; the paper's policy
    is already instruction-tuned (0 steps for the real presets). The optimizer is `optim` with
    the keys below replaced.
    """
    s = mlc.ConfigDict()
    s.steps = 0
    s.batch_size = 32
    s.lr = 1e-3
    s.schedule = "warmup_cosine"
    s.warmup_steps = 100
    s.min_lr_ratio = 0.1
    s.grad_accum = 1  # micro-batches per update (divides batch_size; same update as one pass)
    # (task type, mixture weight) pairs of the supervised mixture
    s.tasks = (("TorF1", 1.0), ("TorF2", 1.0), ("Counting1", 1.0), ("Counting2", 1.0),
               ("Counting3", 1.0), ("planning", 1.0))
    return s


def _train_config() -> mlc.ConfigDict:
    """Loop settings (rewardmap_jax/rl/trainer.py)."""
    t = mlc.ConfigDict()
    # GRPO steps after the warm start; 0 = one pass of the curriculum, -1 = none (SFT only)
    t.rl_steps = 0
    # A run directory: a fresh run starts from the params of its latest checkpoint (optimizer,
    # step and data state start afresh; rewardmap_jax/experiments/ablation.py shares warm starts).
    t.init_from = ""
    t.init_from_step = 0  # the checkpoint of `init_from` to start from; 0 = its latest
    # Map world: also mark the stations a question names on its map (ring = 1st, square = 2nd);
    # the tiny model learns Counting2 from the marker, not from reading labels (docs/training.md).
    t.highlight_stations = False
    return t


def _mesh_config() -> mlc.ConfigDict:
    """Device mesh ("data", "fsdp", "tensor"); -1 = all remaining devices (model/sharding.py)."""
    m = mlc.ConfigDict()
    m.data = 1
    m.fsdp = -1
    m.tensor = 1
    # Logical axis -> mesh axis (None = replicated; a tuple shards over several). A dimension not
    # divisible by its mesh axes stays replicated.
    m.rules = (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("head_dim", None),
        ("vocab", "tensor"),
        ("vision_embed", "fsdp"),
        ("vision_mlp", "tensor"),
        ("vision_heads", "tensor"),
        ("vision_head_dim", None),
        ("vision_patch", None),
        ("vision_qkv", "tensor"),
        ("vision_merge", "fsdp"),
        ("vision_merge_out", "tensor"),
        ("norm", None),
        ("layers", None),
    )
    # (param path regex, logical axis names) for parameters without logical-axis metadata.
    m.path_rules = ()
    # Multi-host (rewardmap_jax/run/distributed.py): auto = initialize when a cluster environment is
    # detected (SLURM, Open MPI, TPU pod, JAX_COORDINATOR_ADDRESS); off; explicit = the keys below.
    m.dist_mode = "auto"
    m.coordinator_address = ""  # "host:port" of process 0
    m.num_processes = 0
    m.process_id = -1
    m.local_device_ids = ()
    m.cpu_collectives = "gloo"  # CPU cross-process collectives ("" = JAX default)
    return m


def _data_config() -> mlc.ConfigDict:
    """Input pipeline (docs/data.md): sources, image/prompt processing, bucketed batches."""
    d = mlc.ConfigDict()
    d.source = "mapworld"  # mapworld | reasonmap
    d.reasonmap_dir = ""
    d.reasonmap_plus_dir = ""
    d.reasonmap_train_dir = ""
    d.min_pixels = 3136
    d.max_pixels = 12845056
    d.on_bad_row = "raise"  # raise | skip
    d.max_consecutive_bad_rows = 100  # with "skip": stop when this many rows fail in a row
    d.worker_count = 0
    d.tokenizer = ""  # "tiny", a local HF dir, or "" = model.hf_dir (else "tiny")
    d.split = "train"
    d.mapworld_world = "tiny"  # mapworld preset (tiny | small | dense)
    d.mapworld_questions_per_task = 2048  # source size per task type (one curriculum pass)
    d.batch_size = 16  # global prompts per step (rollout batch; official 16)
    d.system_prompt = "You are a helpful assistant."
    # Static shapes: prompts left-padded to the smallest fitting bucket; image patches packed
    # into the smallest fitting buffer; SFT targets right-padded to an answer bucket.
    d.prompt_buckets = (1024, 2048, 4096, 8192, 12288, 16384, 20480)
    # One 5,839 x 5,449 map at max_pixels 12845056 is 64,944 patch rows (16,236 image tokens).
    d.patch_buckets = (65536, 131072, 262144, 524288, 786432, 1048576)
    d.answer_buckets = (128, 256, 512, 1024, 2048)
    d.truncation = "error"  # error | left (never cuts image tokens)
    d.max_image_pixels = 64_000_000  # decoded input bound (real maps ~5,800 x 5,400)
    d.pixel_dtype = "float32"  # float32 | bfloat16 (host buffer dtype of pixel_values)
    d.shard = "jax_process"  # jax_process | none: per-host slice of each global batch
    d.read_threads = 1  # Grain ReadOptions.num_threads when worker_count == 0
    d.prefetch = 2  # batches/elements buffered per Grain worker
    return d


def _tiny_data(d: mlc.ConfigDict) -> None:
    """84 px maps -> 36 patches / 9 image tokens each; prompts ~70-130 tokens."""
    d.batch_size = 8
    d.prompt_buckets = (96, 128, 160, 192, 256)
    d.patch_buckets = (288, 576, 1152, 2304)
    d.answer_buckets = (8, 16, 32, 64)

def _route_data(d: mlc.ConfigDict) -> None:
    """The `route_grid` world (docs/mapworld.md): answers are <= 5 tokens (VQA) or 15 / 32 (0 /
    1-transfer plans)."""
    # Stations named after their cells: a 1-transfer plan's transfer station can be named from
    # where it is. On `route` (random letters) no 1-transfer question is ever answered right at
    # this scale (docs/planning.md).
    d.mapworld_world = "route_grid"
    # One answer bucket: nearly every SFT batch holds a 1-transfer plan (32 tokens + end), so
    # smaller buckets would only add compilations (one per bucket) for the rare batch without.
    d.answer_buckets = (40,)


def _curriculum_config() -> mlc.ConfigDict:
    """Stage schedule (rewardmap_jax/data/curriculum.py; rewardmap.md §5)."""
    cu = mlc.ConfigDict()
    cu.preset = "official"  # official | coarse | fine_grained | shuffled | soft
    # Explicit stages override the preset: [{"name", "weights": {task: w}, "steps": n or -1}]
    cu.stages = ()
    cu.stage_steps = 100  # `soft` preset: steps per stage
    cu.overlap = 0  # steps of linear blending around each stage boundary (weighted stages)
    cu.repeat = False  # restart the schedule (reshuffled) when it is used up
    return cu


def _base() -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.seed = 0
    c.preset = "tiny"

    c.model = mlc.ConfigDict()
    c.model.preset = "tiny"
    c.model.hf_dir = ""  # local Hugging Face directory with real weights (overrides preset)
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "float32"
    c.model.remat = "none"  # none | full | dots
    c.model.attn_impl = "xla"  # xla | cudnn (GPU flash kernel; bf16/fp16 only)
    c.model.attn_chunk = 512  # query chunk of full/LM attention (memory O(chunk * keys))
    # Bound on the slots one image spans in a packed vision buffer: vision full attention then
    # reads attn_chunk + 2 * span keys per query chunk, not the whole buffer. -1 = derived from
    # data.max_pixels (the most slots a resized image can span: 87,360 for the real models at
    # the default max_pixels; model/build.py), 0 = every key, > 0 = this bound (a multiple of
    # the model's window_patches, 64 for the real models).
    c.model.vision_frame_span = -1

    c.mesh = _mesh_config()

    c.data = _data_config()
    c.curriculum = _curriculum_config()

    c.reward = _reward_config()
    c.rl = _rl_config()
    c.optim = _optim_config()
    c.checkpoint = _checkpoint_config()
    c.log = _log_config()
    c.eval = _eval_config()
    c.sft = _sft_config()
    c.train = _train_config()
    return c


def _tiny_training(c: mlc.ConfigDict) -> None:
    """The CPU demo (measured numbers and what was tried in docs/training.md).

    84 px maps with the named stations marked, the 0.69M-parameter tiny model: a supervised warm
    start on short-answer tasks, stopped where Counting2 (from the marker) and Counting3 are
    learnt and both TorF tasks are still at chance (held-out SFT curve in docs/training.md), then
    GRPO (8 prompts x G=4, lr 2e-4, DAPO dynamic sampling: the warm-started model is confident
    and most groups have equal rewards) over a two-stage curriculum ending with every task type
    (Counting1 and planning are not warm-started: they exercise sampling, parsing and rewards).
    """
    c.train.highlight_stations = True
    c.sft.steps = 700  # held-out: Counting2 .97, Counting3 .85, TorF1/TorF2 at chance
    c.sft.batch_size = 32
    c.sft.lr = 1e-3
    c.sft.warmup_steps = 100
    # Only short-answer tasks: one prompt bucket (96) and one answer bucket (8) -> one compile.
    c.sft.tasks = (("TorF1", 1.0), ("TorF2", 1.0), ("Counting2", 2.0), ("Counting3", 2.0))
    c.train.rl_steps = 800
    # Stage lengths count curriculum batches: dynamic sampling draws up to 6 per step (~3.7 on
    # average in the perception stage, more once the policy is sure of itself). TorF leads the
    # first stage (the official order starts with it): GRPO learns it there, and Counting3,
    # which dips while TorF is being learnt, recovers before the end (docs/training.md).
    c.curriculum.stages = (
        {"name": "perception", "steps": 1200,
         "weights": {"TorF1": 2.0, "TorF2": 2.0, "Counting2": 1.0, "Counting3": 1.0}},
        {"name": "all_tasks", "steps": 8000,
         "weights": {"TorF1": 1.0, "TorF2": 1.0, "Counting1": 1.0, "Counting2": 2.0,
                     "Counting3": 2.0, "planning": 1.0}},
    )
    c.rl.dynamic_sampling = True
    c.rl.dynamic_sampling_max_rounds = 6
    c.rl.max_new_tokens = 32  # VQA answers are 4-5 tokens; one-line plans fit
    c.optim.lr = 2e-4
    c.checkpoint.every_steps = 200
    c.checkpoint.keep = 20  # keep the warm-start checkpoint (step sft.steps) too
    c.eval.batch_size = 64  # 64 x 36 patch rows = the largest tiny patch bucket (2304)
    c.eval.max_new_tokens = 32
    c.eval.questions_per_task = 1024
    c.eval.every_steps = 0
    c.log.gallery_every_steps = 100

def _route_training(c: mlc.ConfigDict) -> None:
    """The planning demo (`route` preset; docs/planning.md), applied
    on top of `_tiny_training`: only what differs is set here.

    The `route_grid` map world (2-3 connected lines, short plans, 0-1 transfers, stations named
    after their cells; docs/mapworld.md): a warm start half on route planning in the official
    answer format, half on the five Plus types, then 500 GRPO steps from perception to planning
    (the paper's order) with the paper's sparse RL-baseline reward (correctness only, weight 1).
    At this scale the detail reward does not raise planning accuracy, in its official form or
    with its off-by-one corrected (docs/planning.md): `--config.reward.mode=difficulty_aware`
    runs the full RewardMap reward instead.
    """
    c.sft.steps = 1500
    # Half route planning (answers in the official block format), half the five Plus types.
    c.sft.tasks = (("TorF1", 1.0), ("TorF2", 1.0), ("Counting1", 1.0), ("Counting2", 1.0),
                   ("Counting3", 1.0), ("planning", 5.0))
    c.reward.mode = "baseline"
    c.train.rl_steps = 500
    # Perception to planning (the paper's order): the Plus types first, then half of the
    # prompts route planning. Stage lengths count curriculum batches: dynamic sampling draws up
    # to 6 per step, so the 120-batch perception stage lasted 36 steps in the measured run.
    c.curriculum.stages = (
        {"name": "perception", "steps": 120,
         "weights": {"TorF1": 2.0, "TorF2": 2.0, "Counting2": 1.0, "Counting3": 1.0}},
        {"name": "planning", "steps": 8000,
         "weights": {"TorF1": 1.0, "TorF2": 1.0, "Counting1": 1.0, "Counting2": 1.0,
                     "Counting3": 1.0, "planning": 5.0}},
    )
    c.rl.max_new_tokens = 40  # VQA answers are 4-5 tokens, plans 15 or 32 (+ end token)
    c.eval.max_new_tokens = 40


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    """Returns the config for preset `arg` (default `tiny`)."""
    preset = arg or "tiny"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    c = _base()
    c.preset = preset
    if preset in ("tiny", "route"):
        c.model.preset = "tiny"
        _tiny_data(c.data)
        c.rl.max_new_tokens = 64
        c.rl.mini_batch_size = 8
        c.optim.lr = 1e-4
        c.checkpoint.every_steps = 50
        c.eval.max_new_tokens = 64
        _tiny_training(c)
        if preset == "route":  # the planning demo: the tiny model on the route world
            _route_data(c.data)
            _route_training(c)
    else:
        c.model.preset = preset
        # fp32 master weights, bf16 matmuls (verl/EasyR1, MaxText): an lr-1e-6 AdamW update is
        # below bf16's resolution for ~98% of the weights (optim.allow_low_precision_params).
        c.model.param_dtype = "float32"
        c.model.compute_dtype = "bfloat16"
        c.model.remat = "full"
        # One prompt group (G sequences of up to 22,528 tokens + its map) per device per
        # micro-step on 8 devices (the paper's 8 GPUs): 16 prompts / 8 devices / 2 micro-steps.
        # Use rl.mini_batch_size / (data x fsdp devices): 4 on a v5p-8, 1 on 16 chips. Per-device
        # peaks and headroom from the AOT compiles: docs/memory.md §5. Maps of any size mix in
        # a micro-batch (one vision buffer per image: docs/training.md).
        c.rl.grad_accum = 2
        c.data.source = "reasonmap"
        # A real map costs ~3 s of one core to decode and resize (benchmarks/pipeline.py
        # --real-data): 16 maps per step over 8 Grain workers is ~6 s per batch, hidden behind
        # a GRPO step of the order of 100 s (docs/data.md). In-process it would be ~48 s.
        c.data.worker_count = 8
        c.eval.questions_per_task = 0  # the whole held-out split, as the papers report
    return c
