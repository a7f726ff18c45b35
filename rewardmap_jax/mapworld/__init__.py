"""The map world: procedural transit networks, maps and questions, and real-data loaders.

Public entry points: `make_record`, `generate_records`, `get_world`, `PRESETS` (generator),
`fewest_transfer_routes` (network), `answer_text` (questions), `load_reasonmap`,
`load_reasonmap_plus`, `load_reasonmap_train`, `load_figure` (loaders).
"""
