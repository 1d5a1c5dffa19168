"""Video grounding data: annotation readers, clip sampling, clip transforms, collate into `ClipBatch`.

Modules: `index` (the in-memory index and `DataError`), `readers` (SA-Co/VEval, YouTube-VIS, COCO),
`frames` (decoding), `sampler` (frame ownership, clip sampling, distributed samplers), `transforms`,
`prompts`, `dataset`, `mixed` (several datasets by weight), `collate`, `synthetic` (the shapes dataset CLI) and `inspect` (validator CLI).
"""
