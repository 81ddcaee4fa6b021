"""What the trainers that consume a release accept, written down as code.

Three consumers read LLaVA-style JSON, each with its own rules; a release must pass all three without
a sample being dropped, mis-aligned or crashing the run:

* LLaVA (haotian-liu/LLaVA, `llava/train/train.py`): `json.load` of one array; `LazySupervisedDataset`
  opens `os.path.join(image_folder, record["image"])`; `preprocess_multimodal` moves each `<image>` to the
  front of its turn followed by a newline; `preprocess_*` maps `from` through {"human", "gpt"} (any other
  role is a KeyError), skips a first turn that is not human, then asserts strict human/gpt alternation.
  Each `<image>` becomes one IMAGE_TOKEN_INDEX, and the model needs exactly as many as images (one).
* Qwen2.5-VL fine-tuning (QwenLM/Qwen2.5-VL `qwen-vl-finetune/qwenvl/data/data_processor.py`): reads
  `.jsonl` line by line or `.json` with `json.load`; `image` is a string or list joined to the dataset's
  `data_path`; `from == "human"` is the user, everything else the assistant; user text is split on
  `<image>` and each placeholder pops the next image (too many: ValueError), images left over after the
  last turn raise ValueError. A placeholder in an assistant turn is never consumed, so it fails too.
* LLaMA-Factory (hiyouga/LLaMA-Factory, sharegpt format via `data/dataset_info.json`): odd turns must carry
  the user (or observation) tag and even turns the assistant (or function) tag, the message count must be
  even, else the example is "abnormal" and skipped with only a warning; `images` are joined to `media_dir`
  (default: the dataset dir) when that file exists; the multimodal plugin raises when the number of
  `<image>` placeholders in all messages differs from the number of images.

The loaders below follow those rules (minus tokenisation) and report every sample the real trainer would
drop or fail on, so tests can assert a release loses nothing.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuwen.domain import GPT, HUMAN, IMAGE_TOKEN

ImageExists = Callable[[str], bool]


def check_record(record: Any) -> list[str]:
    """Problems that would make any of the three trainers drop, crash on or mis-align this record.

    The rules are DESIGN.md's common subset: keys id/image/conversations, `from` only human/gpt, human
    first, strictly alternating, ending on gpt, exactly one `<image>` and it is in the first human turn,
    no empty turn.
    """
    if not isinstance(record, dict):
        return ["record is not an object"]
    problems = []
    if set(record) != {"id", "image", "conversations"}:
        problems.append(f"keys {sorted(record)} are not id/image/conversations")
    if not isinstance(record.get("id"), str) or not record.get("id"):
        problems.append("id is not a non-empty string")
    image = record.get("image")
    if not isinstance(image, str) or not image or os.path.isabs(image) or ".." in image.split("/"):
        problems.append("image is not a relative path inside the release")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return [*problems, "conversations is not a non-empty list"]
    if len(turns) % 2:
        problems.append(f"{len(turns)} turns: must end on a gpt turn")
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            problems.append(f"turn {index} is not {{from, value}}")
            continue
        expected = HUMAN if index % 2 == 0 else GPT
        if turn.get("from") != expected:
            problems.append(f"turn {index} is from {turn.get('from')!r}, expected {expected!r}")
        if not turn["value"].strip():
            problems.append(f"turn {index} is empty")
    values = [t.get("value", "") if isinstance(t, dict) else "" for t in turns]
    n_images = sum(v.count(IMAGE_TOKEN) for v in values if isinstance(v, str))
    if n_images != 1:
        problems.append(f"{n_images} {IMAGE_TOKEN} placeholders, expected exactly 1")
    elif IMAGE_TOKEN not in (values[0] or ""):
        problems.append(f"{IMAGE_TOKEN} is not in the first human turn")
    return problems


@dataclass
class LoadReport:
    """What one trainer's loader made of a data file: samples it would train on, and those it would not."""

    trainer: str
    loaded: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (sample id, why)

    @property
    def ids(self) -> list[str]:
        return [item["id"] for item in self.loaded]


def read_records(path: Path | str) -> list[dict[str, Any]]:
    """A data file as the trainers read it: `.jsonl` one record per line, otherwise one JSON array."""
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in handle if line.strip()]
        data = json.load(handle)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of samples")
    return data


def _folder_exists(root: Path | str) -> ImageExists:
    return lambda rel: os.path.isfile(os.path.join(root, rel))


def load_llava(data_path: Path | str, image_folder: Path | str, image_exists: ImageExists | None = None
               ) -> LoadReport:
    """LLaVA's LazySupervisedDataset + preprocess_multimodal + preprocess (conv templates v1/plain)."""
    exists = image_exists or _folder_exists(image_folder)
    report = LoadReport("llava")
    roles = {HUMAN: 0, GPT: 1}  # conv.roles[0] / conv.roles[1]
    for record in read_records(data_path):
        rid = str(record.get("id"))
        try:
            if "image" in record and not exists(record["image"]):
                raise FileNotFoundError(f"{record['image']} not under image_folder")
            turns = [dict(t) for t in record["conversations"]]
            for index, turn in enumerate(turns):  # preprocess_multimodal
                placeholders = turn["value"].count(IMAGE_TOKEN)
                if placeholders > 1:  # replace-all then prepend one: the text silently changes
                    raise ValueError(f"mis-read: {placeholders} <image> in turn {index} collapse into one")
                if placeholders and index != 0:  # the image features would land in a later turn
                    raise ValueError(f"mis-aligned: <image> in turn {index}, not the first human turn")
                if IMAGE_TOKEN in turn["value"]:
                    turn["value"] = IMAGE_TOKEN + "\n" + turn["value"].replace(IMAGE_TOKEN, "").strip()
                    turn["value"] = turn["value"].strip()
            if roles[turns[0]["from"]] != 0:  # "Skip the first one if it is not from human"
                turns = turns[1:]
            for j, turn in enumerate(turns):
                if roles[turn["from"]] != j % 2:
                    raise AssertionError(f"turn {j} breaks human/gpt alternation")
            prompt = "".join(t["value"] for t in turns)
            if prompt.count(IMAGE_TOKEN) != (1 if "image" in record else 0):
                raise ValueError("image token count differs from the number of images")
            if turns[-1]["from"] != GPT:
                raise ValueError("last turn is not gpt: nothing to learn from it")
        except (KeyError, AssertionError, ValueError, FileNotFoundError, TypeError, IndexError) as exc:
            report.dropped.append((rid, f"{type(exc).__name__}: {exc}"))
            continue
        report.loaded.append({"id": rid, "image": record.get("image"), "conversations": turns})
    return report


def _qwen_user_content(text: str, pool: list[str]) -> list[dict[str, str]]:
    """A user turn split on its placeholders; each `<image>` pops the next image of the record."""
    content: list[dict[str, str]] = []
    for seg in re.split(r"(<image>|<video>)", text):
        if seg == "<video>":
            raise ValueError("<video> placeholder without a video")
        if seg == IMAGE_TOKEN:
            if not pool:
                raise ValueError("more <image> placeholders than images")
            content.append({"type": "image", "image": pool.pop(0)})
        elif seg.strip():
            content.append({"type": "text", "text": seg.strip()})
    return content


def _qwen_messages(record: dict[str, Any], exists: ImageExists) -> tuple[list[str], list[dict[str, Any]]]:
    """The record's images and its messages as `_build_messages` makes them; raises what the loader would."""
    images = record.get("image") or []
    if isinstance(images, str):
        images = [images]
    missing = next((image for image in images if not exists(image)), None)
    if missing is not None:
        raise FileNotFoundError(f"{missing} not under data_path")
    pool = list(images)
    messages = []
    for turn in record["conversations"]:
        if turn["from"] == HUMAN:
            messages.append({"role": "user", "content": _qwen_user_content(turn["value"], pool)})
        else:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": turn["value"]}]})
    if pool:
        raise ValueError(f"{len(pool)} image(s) not consumed by placeholders")
    return images, messages


def load_qwen_finetune(annotation_path: Path | str, data_path: Path | str,
                       image_exists: ImageExists | None = None) -> LoadReport:
    """Qwen2.5-VL qwen-vl-finetune's LazySupervisedDataset + _build_messages."""
    exists = image_exists or _folder_exists(data_path)
    report = LoadReport("qwen2.5-vl")
    for record in read_records(annotation_path):
        rid = str(record.get("id"))
        try:
            images, messages = _qwen_messages(record, exists)
        except (KeyError, ValueError, FileNotFoundError, TypeError) as exc:
            report.dropped.append((rid, f"{type(exc).__name__}: {exc}"))
            continue
        report.loaded.append({"id": rid, "image": images, "messages": messages})
    return report


def load_llamafactory(dataset_dir: Path | str, dataset: str, image_exists: ImageExists | None = None
                      ) -> LoadReport:
    """LLaMA-Factory: dataset_info.json entry -> SharegptDatasetConverter -> mm_plugin placeholder check."""
    dataset_dir = Path(dataset_dir)
    info = json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))[dataset]
    if info.get("formatting") != "sharegpt":
        raise ValueError(f"{dataset}: formatting {info.get('formatting')!r} is not sharegpt")
    columns = info.get("columns", {})
    tags = {"role_tag": "from", "content_tag": "value", "user_tag": HUMAN, "assistant_tag": GPT,
            "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
            **info.get("tags", {})}
    messages_col, images_col = columns.get("messages", "conversations"), columns.get("images")
    media_dir = dataset_dir  # data_args.media_dir defaults to dataset_dir
    exists = image_exists or _folder_exists(media_dir)
    accept = ((tags["user_tag"], tags["observation_tag"]), (tags["assistant_tag"], tags["function_tag"]))
    report = LoadReport("llamafactory")
    for record in read_records(dataset_dir / info["file_name"]):
        rid = str(record.get("id"))
        messages = record[messages_col]
        if messages and messages[0][tags["role_tag"]] == tags["system_tag"]:
            messages = messages[1:]
        broken = next((f"invalid role tag at turn {i}" for i, m in enumerate(messages)
                       if m[tags["role_tag"]] not in accept[i % 2]), None)
        if broken is None and len(messages) % 2:
            broken = "invalid message count"
        if broken:
            report.dropped.append((rid, f"skipped as abnormal: {broken}"))
            continue
        images = record.get(images_col) if images_col else None
        images = [images] if isinstance(images, str) else list(images or [])
        missing = [image for image in images if not exists(image)]
        placeholders = sum(m[tags["content_tag"]].count(IMAGE_TOKEN) for m in messages)
        if missing:
            report.dropped.append((rid, f"media not found under media_dir: {missing}"))
        elif placeholders != len(images):
            report.dropped.append((rid, f"{placeholders} <image> tokens for {len(images)} images"))
        else:
            report.loaded.append({"id": rid, "images": images, "messages": messages})
    return report


def iter_json_array(path: Path | str, chunk_chars: int = 1 << 20) -> Iterator[Any]:
    """The elements of a (possibly huge) JSON array file, one at a time, in constant memory per element."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as handle:
        buffer = handle.read(chunk_chars).lstrip()
        if not buffer.startswith("["):
            raise ValueError(f"{path}: not a JSON array")
        buffer, eof = buffer[1:], False
        while True:
            buffer = buffer.lstrip()
            if buffer.startswith("]"):
                return
            if buffer.startswith(","):
                buffer = buffer[1:]
                continue
            value = None
            if buffer:
                try:
                    value, end = decoder.raw_decode(buffer)
                except json.JSONDecodeError:
                    value = None
            if value is None:  # an element split across chunks (elements are objects, never null)
                if eof:
                    raise ValueError(f"{path}: truncated or malformed JSON array")
                more = handle.read(chunk_chars)
                eof = not more
                buffer += more
                continue
            yield value
            buffer = buffer[end:]
