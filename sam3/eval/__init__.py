"""Evaluation: post-processing, masklet linking, SA-Co/VEval video metrics and COCO image metrics.

Pipeline of a video evaluation (`evaluate` composes these once frame-sharded inference exists):
per frame `postprocess.postprocess` (optionally `MaskNMS` on each rank) -> per video
`linking.link_video` -> ranks' records `saco_format.merge_prediction_shards` -> `write_predictions`
-> `veval.evaluate_veval`.

Metric sources: class mAP and phrase AP use pycocotools' COCOeval with a spatio-temporal IoU
(`video_ap`, `track_iou`); HOTA is TrackEval's `HOTA` metric (`hota`). Written here because no
maintained package offers them: TETA (`teta`), cgF1 / IL-MCC and their demo variants (`cgf1`), the
spatio-temporal IoU itself and the SA-Co/VEval reader (`saco_format`).
"""
