"""The stand-in's data URL decoding (tuwen.local.standin_vlm.server.decode_data_url): what vLLM accepts it
accepts, byte for byte, and what it refuses is a RequestError with status 400 (a 400 response), never a 500."""

from __future__ import annotations

import base64
import os

import pytest

from tuwen.local.standin_vlm.server import RequestError, decode_data_url


def test_round_trips_the_bytes_of_a_large_image() -> None:
    data = os.urandom(300_001)  # not a multiple of 3: the payload ends in padding
    url = f"data:image/jpeg;base64,{base64.b64encode(data).decode('ascii')}"
    assert decode_data_url(url) == data


@pytest.mark.parametrize("payload", [
    "YWJj\n",  # a line break: validated base64 has none
    "ab!c",  # outside the alphabet
    "abc",  # short of its padding
    "YQ==YQ==",  # data after the padding
    "图片",  # not ASCII
])
def test_invalid_base64_is_a_400(payload: str) -> None:
    with pytest.raises(RequestError) as raised:
        decode_data_url(f"data:image/png;base64,{payload}")
    assert raised.value.status == 400
    assert "not valid base64" in raised.value.message


@pytest.mark.parametrize("url", ["data:text/plain;base64,YWJj", "data:image/png,YWJj", "image/png;base64,YWJj"])
def test_a_url_that_is_not_an_image_data_url_is_a_400(url: str) -> None:
    with pytest.raises(RequestError) as raised:
        decode_data_url(url)
    assert raised.value.status == 400
