"""Data: tokenizer/processor loading, image preprocessing, prompts, curriculum and Grain pipeline.

Modules (import what you need; nothing heavy is imported here):

* `tokenizer`: `load_tokenizer("tiny" | hf_dir)`, `load_processor(hf_dir)`, `special_token_ids`.
* `fast_tokenizer`: `FastTokenizer` (tokenizers + jinja; used inside Grain workers).
* `image_processing`: `smart_resize`, `preprocess(image, ImageProcessorConfig)`, `open_figure`.
* `prompts`: `build_messages`, `encode_prompt`, `target_text`, `encode_target`, padding helpers.
* `curriculum`: `Stage`, `Schedule`, `preset_schedule`, `schedule_from_config`, `build_plan`.
* `sources`: `MapWorldSource`, `RecordListSource`, `real_sources`.
* `pipeline`: `DataPipeline.from_config(config)` -> `.iterator()` of bucketed numpy batches.

See docs/data.md. This package never imports model code.
"""
