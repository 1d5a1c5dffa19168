"""Evaluation: post-processing, masklet linking, SA-Co/VEval video metrics and COCO image metrics.

Pipeline of a video evaluation (`evaluate` composes these once frame-sharded inference exists):
per frame `postprocess.postprocess` -> per (video, prompt) `linking.frame_masks` + `link_masklets` +
`masklets_to_records` -> `saco_format.write_predictions` -> `veval.evaluate_veval`.

Metric sources: class mAP and phrase AP use pycocotools' COCOeval with a spatio-temporal IoU
(`video_ap`, `track_iou`); HOTA is TrackEval's `HOTA` metric (`hota`). Written here because no
maintained package offers them: TETA (`teta`), cgF1 / IL-MCC and their demo variants (`cgf1`), the
spatio-temporal IoU itself and the SA-Co/VEval reader (`saco_format`).
"""
