"""Evaluation: detection mAP (official ActivityNet semantics and a W-TALC compatibility mode),
classification mAP, and ActivityNet-format result files."""

from wtal.evaluation.classification import classification_map
from wtal.evaluation.detection import ACTIVITYNET_TIOU, THUMOS14_TIOU, DetectionReport, detection_map
from wtal.evaluation.results import read_results, results_to_json, write_results
from wtal.evaluation.wtalc import wtalc_detection_map

__all__ = ["ACTIVITYNET_TIOU", "THUMOS14_TIOU", "DetectionReport", "classification_map", "detection_map",
           "read_results", "results_to_json", "wtalc_detection_map", "write_results"]
