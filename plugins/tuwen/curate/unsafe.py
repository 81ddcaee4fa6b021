"""The unsafe-content scorer: NudeNet 3.4's 320n detector (a YOLOv8n ONNX model inside the `nudenet`
wheel, so it runs offline), on ONNX Runtime with one thread, so N curation workers use N cores.

The score is the highest confidence among the exposed-body classes; covered body parts, faces and feet
are not unsafe. The filter's threshold is `CurationConfig.unsafe_min_score` (docs/OPERATIONS.md).
The repository never holds an unsafe image: tests inject a scorer (tests/unit/test_curate_filters.py).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

UNSAFE_CLASSES = frozenset({"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
                            "BUTTOCKS_EXPOSED", "ANUS_EXPOSED"})
INPUT_SIDE = 320


@lru_cache(maxsize=1)
def _detector() -> Any:
    import nudenet  # heavy (onnxruntime session): only when the unsafe filter runs
    import onnxruntime
    from nudenet.nudenet import NudeDetector

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    detector = NudeDetector.__new__(NudeDetector)  # its __init__ builds a session on every core
    model = Path(nudenet.__file__).parent / "320n.onnx"
    detector.onnx_session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    detector.input_width = detector.input_height = INPUT_SIDE
    detector.input_name = detector.onnx_session.get_inputs()[0].name
    return detector


def nudenet_score(bgr: np.ndarray) -> float:
    """Highest exposed-body confidence NudeNet finds in the BGR image (0 when none)."""
    detections = _detector().detect(bgr)
    return max((float(d["score"]) for d in detections if d["class"] in UNSAFE_CLASSES), default=0.0)


def available() -> bool:
    """Whether the detector's package is installed (the filter is skipped, and says so, when not)."""
    try:
        import nudenet  # noqa: F401
    except ImportError:
        return False
    return True
