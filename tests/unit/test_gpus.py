"""GPU requests (chalkcompute.gpu) and this host's inventory and allocator (chalkd.gpus).

No test needs a GPU: inventories are built by hand, faked with CHALKD_FAKE_GPUS, or read
from a stand-in pynvml module.
"""

from __future__ import annotations

import json
import sys
import types

import pytest

from chalkcompute.gpu import MAX_GPUS, GpuRequest, model_tokens
from chalkd.gpus import (
    FAKE_GPUS_ENV,
    GpuAllocator,
    GpuDevice,
    detect_gpus,
    format_memory,
    probe_gpus,
    summarize,
)

GB = 10**9


def dev(index: int, name: str, memory: int = 0) -> GpuDevice:
    return GpuDevice(index=index, uuid=f"GPU-{index}", name=name, memory_bytes=memory)


@pytest.fixture(autouse=True)
def _no_fake_gpus(monkeypatch):
    # A developer's own CHALKD_FAKE_GPUS must not leak into these tests.
    monkeypatch.delenv(FAKE_GPUS_ENV, raising=False)


# --- parsing -------------------------------------------------------------------------------

@pytest.mark.parametrize("value, count, model", [
    ("nvidia-l4", 1, "nvidia-l4"),
    ("2:nvidia-a100", 2, "nvidia-a100"),
    ("NVIDIA-A100", 1, "nvidia-a100"),
    ("4:NVIDIA-H100", 4, "nvidia-h100"),
    ("1:nvidia-l4", 1, "nvidia-l4"),
    ("any", 1, "any"),
    ("2:any", 2, "any"),
    ("ANY", 1, "any"),
    (f"{MAX_GPUS}:nvidia-a100-80gb", MAX_GPUS, "nvidia-a100-80gb"),
    ("nvidia_a100.80gb", 1, "nvidia_a100.80gb"),
    ("t4", 1, "t4"),
])
def test_parse(value, count, model):
    assert GpuRequest.parse(value) == GpuRequest(count, model)


@pytest.mark.parametrize("value, text", [
    ("nvidia-l4", "nvidia-l4"),
    ("1:nvidia-l4", "nvidia-l4"),
    ("2:nvidia-a100", "2:nvidia-a100"),
    ("2:NVIDIA-A100", "2:nvidia-a100"),
    ("3:any", "3:any"),
])
def test_str_round_trips(value, text):
    request = GpuRequest.parse(value)
    assert str(request) == text
    assert GpuRequest.parse(str(request)) == request


def test_parse_passes_a_request_through_and_requests_are_hashable():
    request = GpuRequest(2, "nvidia-a100")
    assert GpuRequest.parse(request) is request
    assert {request, GpuRequest.parse("2:nvidia-a100")} == {request}
    with pytest.raises(AttributeError):
        request.count = 3  # type: ignore[misc]


@pytest.mark.parametrize("value, fragment", [
    ("", "must not be empty"),
    ("0:nvidia-l4", "from 1 to 16, got 0"),
    ("-1:nvidia-l4", "'-1'"),
    ("x:nvidia-l4", "'x'"),
    ("1.5:nvidia-l4", "'1.5'"),
    (":nvidia-l4", "''"),
    ("17:nvidia-l4", "from 1 to 16, got 17"),
    ("1000:nvidia-l4", "got 1000"),
    ("2:", "no model"),
    ("2:3:nvidia-l4", "'2:3'"),
    ("nvidia l4", "whitespace"),
    (" nvidia-l4", "whitespace"),
    ("nvidia-l4\n", "whitespace"),
    ("2: nvidia-l4", "whitespace"),
    ("nvidia/l4", "letters, digits"),
    ("nvidia-l4!", "letters, digits"),
    ("-nvidia-l4", "letters, digits"),
    ("nvidia-l4;rm", "letters, digits"),
    ("nvidia", "no model"),
    ("2:NVIDIA", "no model"),
    ("nvidia-tesla", "no model"),
])
def test_parse_errors_name_gpu_and_the_value(value, fragment):
    with pytest.raises(ValueError) as info:
        GpuRequest.parse(value)
    message = str(info.value)
    assert "gpu" in message
    assert fragment in message
    assert f"gpu={value!r}" in message


@pytest.mark.parametrize("value", [None, 2, 1.0, True, b"nvidia-l4", ["nvidia-l4"], {"gpu": "x"}])
def test_parse_refuses_non_strings(value):
    with pytest.raises(TypeError, match=r"gpu must be a str .* got "):
        GpuRequest.parse(value)


@pytest.mark.parametrize("count, model, error", [
    (0, "nvidia-l4", ValueError),
    (17, "nvidia-l4", ValueError),
    (True, "nvidia-l4", TypeError),
    ("2", "nvidia-l4", TypeError),
    (1, "NVIDIA-L4", ValueError),   # constructed directly, the model must already be canonical
    (1, "nvidia l4", ValueError),
    (1, "nvidia", ValueError),
    (1, 4, TypeError),
])
def test_direct_construction_is_validated(count, model, error):
    with pytest.raises(error, match="gpu"):
        GpuRequest(count, model)


# --- matching ------------------------------------------------------------------------------

@pytest.mark.parametrize("request_, device, expected", [
    ("nvidia-a100", "NVIDIA A100-SXM4-80GB", True),
    ("nvidia-a100", "NVIDIA A100 80GB PCIe", True),
    ("nvidia-a100", "NVIDIA A100-SXM4-40GB", True),
    ("nvidia-a100-80gb", "NVIDIA A100-SXM4-80GB", True),
    ("nvidia-a100-80gb", "NVIDIA A100 80GB PCIe", True),
    ("nvidia-a100-80gb", "NVIDIA A100-SXM4-40GB", False),
    ("nvidia-a100-sxm4", "NVIDIA A100 80GB PCIe", False),
    ("nvidia-l4", "NVIDIA L4", True),
    ("nvidia-l4", "NVIDIA L40S", False),
    ("nvidia-l4", "NVIDIA L40", False),
    ("nvidia-l40s", "NVIDIA L40S", True),
    ("nvidia-h100", "NVIDIA H100 80GB HBM3", True),
    ("nvidia-h100", "NVIDIA H100 PCIe", True),
    ("nvidia-h100", "NVIDIA H200", False),
    ("nvidia-a10", "NVIDIA A100-SXM4-80GB", False),
    ("nvidia-a10", "NVIDIA A10", True),
    ("nvidia-a10g", "NVIDIA A10G", True),
    ("nvidia-geforce-rtx-4090", "NVIDIA GeForce RTX 4090", True),
    ("nvidia-geforce-rtx-4090", "NVIDIA GeForce RTX 4080", False),
    ("nvidia-rtx-4090", "NVIDIA GeForce RTX 4090", False),   # documented: brand words are kept
    ("nvidia-t4", "Tesla T4", True),
    ("nvidia-tesla-t4", "Tesla T4", True),
    ("nvidia-v100", "Tesla V100-SXM2-16GB", True),
    ("nvidia-v100-32gb", "Tesla V100-SXM2-16GB", False),
    ("t4", "Tesla T4", True),
    ("NVIDIA-L4", "nvidia l4", True),
    ("any", "NVIDIA L4", True),
    ("any", "Tesla T4", True),
    ("nvidia-l4", "", False),
    ("nvidia-l4", "NVIDIA", False),
])
def test_matching_rule(request_, device, expected):
    assert GpuRequest.parse(request_).matches(device) is expected


def test_model_tokens_drop_vendor_words():
    assert model_tokens("NVIDIA A100-SXM4-80GB") == ["a100", "sxm4", "80gb"]
    assert model_tokens("Tesla T4") == ["t4"]
    assert model_tokens("nvidia-geforce-rtx-4090") == ["geforce", "rtx", "4090"]
    assert model_tokens("AMD Instinct MI300X") == ["instinct", "mi300x"]


def test_the_module_docstring_documents_the_rule_and_examples():
    import chalkcompute.gpu as gpu

    doc = gpu.__doc__
    for needle in ("tesla", "any", "NVIDIA A100-SXM4-80GB", "NVIDIA L40S", "Tesla T4", "NVIDIA GeForce RTX 4090",
                   "NVIDIA H100 80GB HBM3"):
        assert needle in doc


# --- allocator -----------------------------------------------------------------------------

def test_allocation_is_exclusive_and_released():
    alloc = GpuAllocator([dev(1, "NVIDIA A100-SXM4-80GB"), dev(0, "NVIDIA A100-SXM4-80GB"), dev(2, "NVIDIA L4")])
    a100 = GpuRequest.parse("nvidia-a100")
    first = alloc.allocate("r-1", a100)
    assert [d.index for d in first] == [0]   # lowest index first, whatever order the devices came in
    second = alloc.allocate("r-2", a100)
    assert [d.index for d in second] == [1]
    assert alloc.allocate("r-3", a100) is None   # both A100s are held: not now...
    assert alloc.unschedulable_reason(a100) is None   # ...but it can fit once one is free
    assert alloc.in_use() == {"GPU-0": "r-1", "GPU-1": "r-2"}
    assert alloc.held_by("r-1") == first

    assert alloc.release("r-1") == first
    assert alloc.release("r-1") == []   # twice is harmless
    assert alloc.release("never-held") == []
    assert alloc.in_use() == {"GPU-1": "r-2"}
    assert [d.index for d in alloc.allocate("r-3", a100)] == [0]


def test_multi_gpu_requests_take_all_or_nothing():
    alloc = GpuAllocator([dev(i, "NVIDIA A100-SXM4-80GB") for i in range(3)] + [dev(3, "NVIDIA L4")])
    two = GpuRequest.parse("2:nvidia-a100")
    assert [d.uuid for d in alloc.allocate("big", two)] == ["GPU-0", "GPU-1"]
    assert alloc.allocate("big-2", two) is None   # one A100 left: nothing is taken
    assert set(alloc.in_use()) == {"GPU-0", "GPU-1"}
    assert [d.uuid for d in alloc.allocate("small", GpuRequest.parse("nvidia-a100"))] == ["GPU-2"]
    # The L4 never counts toward an A100 request, and "any" takes whatever is left.
    assert alloc.allocate("other", GpuRequest.parse("2:any")) is None
    assert [d.uuid for d in alloc.allocate("other", GpuRequest.parse("any"))] == ["GPU-3"]
    alloc.release("big")
    assert [d.uuid for d in alloc.allocate("big-2", two)] == ["GPU-0", "GPU-1"]


def test_an_owner_holds_one_allocation_at_a_time():
    alloc = GpuAllocator([dev(0, "NVIDIA L4"), dev(1, "NVIDIA L4")])
    alloc.allocate("r-1", GpuRequest.parse("nvidia-l4"))
    with pytest.raises(ValueError, match="already holds"):
        alloc.allocate("r-1", GpuRequest.parse("nvidia-l4"))
    assert alloc.in_use() == {"GPU-0": "r-1"}


def test_a_request_that_can_never_fit_is_unschedulable_and_not_allocated():
    alloc = GpuAllocator([dev(0, "NVIDIA L4", 24 * GB)])
    want = GpuRequest.parse("2:nvidia-a100")
    assert alloc.unschedulable_reason(want) == "no host has 2 x nvidia-a100; hosts have: 1 x NVIDIA L4"
    assert alloc.allocate("r-1", want) is None
    assert alloc.in_use() == {}
    assert alloc.unschedulable_reason(GpuRequest.parse("2:nvidia-l4")) == \
        "no host has 2 x nvidia-l4; hosts have: 1 x NVIDIA L4"
    assert alloc.unschedulable_reason(GpuRequest.parse("nvidia-l40s")) == \
        "no host has 1 x nvidia-l40s; hosts have: 1 x NVIDIA L4"
    assert alloc.unschedulable_reason(GpuRequest.parse("nvidia-l4")) is None
    assert alloc.unschedulable_reason(GpuRequest.parse("any")) is None


def test_reason_strings():
    none = GpuAllocator([])
    assert none.unschedulable_reason(GpuRequest.parse("nvidia-l4")) == \
        "no host has 1 x nvidia-l4; hosts have: no GPUs"
    assert none.unschedulable_reason(GpuRequest.parse("any")) == "no host has 1 x any GPU; hosts have: no GPUs"
    assert none.allocate("r", GpuRequest.parse("any")) is None

    mixed = GpuAllocator([dev(0, "NVIDIA A100-SXM4-80GB"), dev(1, "NVIDIA L4"), dev(2, "NVIDIA A100-SXM4-80GB")])
    assert mixed.summary() == "2 x NVIDIA A100-SXM4-80GB, 1 x NVIDIA L4"
    assert mixed.unschedulable_reason(GpuRequest.parse("4:any")) == \
        "no host has 4 x any GPU; hosts have: 2 x NVIDIA A100-SXM4-80GB, 1 x NVIDIA L4"
    assert mixed.unschedulable_reason(GpuRequest.parse("nvidia-a100-40gb")) == \
        "no host has 1 x nvidia-a100-40gb; hosts have: 2 x NVIDIA A100-SXM4-80GB, 1 x NVIDIA L4"
    assert mixed.unschedulable_reason(GpuRequest.parse("3:any")) is None
    assert summarize([]) == "no GPUs"


def test_describe_rows():
    alloc = GpuAllocator([dev(0, "NVIDIA L4", 24_000_000_000), dev(1, "NVIDIA L4")])
    alloc.allocate("r-9", GpuRequest.parse("nvidia-l4"))
    assert alloc.describe() == [
        {"index": "0", "name": "NVIDIA L4", "memory": "22.4 GiB", "uuid": "GPU-0", "owner": "r-9"},
        {"index": "1", "name": "NVIDIA L4", "memory": "?", "uuid": "GPU-1", "owner": ""},
    ]
    assert format_memory(80 * 2**30) == "80.0 GiB"


# --- inventory: fake -----------------------------------------------------------------------

FAKE = [
    {"name": "NVIDIA L4", "uuid": "GPU-fake-0", "memory_bytes": 24000000000},
    {"name": "NVIDIA A100-SXM4-80GB"},
]


def test_fake_inventory_from_env(monkeypatch):
    monkeypatch.setenv(FAKE_GPUS_ENV, json.dumps(FAKE))
    assert detect_gpus() == [
        GpuDevice(0, "GPU-fake-0", "NVIDIA L4", 24000000000),
        GpuDevice(1, "GPU-fake-1", "NVIDIA A100-SXM4-80GB", 0),
    ]
    inventory = probe_gpus()
    assert inventory.source == "fake" and FAKE_GPUS_ENV in inventory.note
    alloc = GpuAllocator(detect_gpus())
    assert alloc.unschedulable_reason(GpuRequest.parse("2:nvidia-a100")) == \
        "no host has 2 x nvidia-a100; hosts have: 1 x NVIDIA L4, 1 x NVIDIA A100-SXM4-80GB"


def test_fake_inventory_from_a_file(monkeypatch, tmp_path):
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps([{"name": "Tesla T4", "index": 3, "uuid": "GPU-t4"},
                                {"name": "Tesla T4", "index": 1, "uuid": "GPU-t4b"}]))
    monkeypatch.setenv(FAKE_GPUS_ENV, str(path))
    assert [(d.index, d.uuid) for d in detect_gpus()] == [(1, "GPU-t4b"), (3, "GPU-t4")]
    assert str(path) in probe_gpus().note


def test_fake_empty_list_is_a_host_without_gpus(monkeypatch):
    monkeypatch.setenv(FAKE_GPUS_ENV, "[]")
    inventory = probe_gpus()
    assert inventory.devices == () and inventory.source == "fake"


def test_empty_fake_env_counts_as_unset(monkeypatch):
    monkeypatch.setenv(FAKE_GPUS_ENV, "")
    assert probe_gpus().source == "nvml"


@pytest.mark.parametrize("value, fragment", [
    ("[", "not valid JSON"),
    ('{"name": "NVIDIA L4"}', "must be a JSON list"),   # starts with "{": read as a path
    ("/no/such/gpus.json", "cannot read"),
    ('["NVIDIA L4"]', "must be an object"),
    ('[{"uuid": "GPU-1"}]', 'needs a non-empty string "name"'),
    ('[{"name": ""}]', 'needs a non-empty string "name"'),
    ('[{"name": "NVIDIA L4", "memory": 1}]', "unknown keys ['memory']"),
    ('[{"name": "NVIDIA L4", "memory_bytes": -1}]', '"memory_bytes" must be a non-negative int'),
    ('[{"name": "NVIDIA L4", "memory_bytes": "24GB"}]', '"memory_bytes" must be a non-negative int'),
    ('[{"name": "NVIDIA L4", "uuid": 5}]', '"uuid" must be a non-empty string'),
    ('[{"name": "NVIDIA L4", "index": true}]', '"index" must be a non-negative int'),
    ('[{"name": "NVIDIA L4", "uuid": "a"}, {"name": "NVIDIA L4", "uuid": "a"}]', "duplicate uuid a"),
    ('[{"name": "NVIDIA L4", "index": 0}, {"name": "NVIDIA L4", "index": 0, "uuid": "b"}]', "duplicate index 0"),
])
def test_malformed_fake_inventory_is_an_error(monkeypatch, value, fragment):
    monkeypatch.setenv(FAKE_GPUS_ENV, value)
    with pytest.raises(ValueError) as info:
        detect_gpus()
    assert fragment in str(info.value)
    assert FAKE_GPUS_ENV in str(info.value)


def test_fake_inventory_json_file_holding_an_object(monkeypatch, tmp_path):
    path = tmp_path / "gpus.json"
    path.write_text('{"name": "NVIDIA L4"}')
    monkeypatch.setenv(FAKE_GPUS_ENV, str(path))
    with pytest.raises(ValueError, match="must be a JSON list of GPUs, got dict"):
        detect_gpus()


# --- inventory: NVML -----------------------------------------------------------------------

def test_detect_gpus_on_this_machine_never_raises():
    inventory = probe_gpus()
    assert inventory.source == "nvml"
    assert detect_gpus() == list(inventory.devices)
    assert all(isinstance(d, GpuDevice) and d.uuid and d.name for d in inventory.devices)
    if not inventory.devices:
        assert inventory.note   # the reason is kept for `chalkd gpus`


class FakeNvml(types.ModuleType):
    """A stand-in pynvml: enough of the API for detect_gpus, recording init/shutdown."""

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        def __str__(self):
            return "NVML Shared Library Not Found"

    def __init__(self, boards, init_error=None, count_error=None, broken=()):
        super().__init__("pynvml")
        self.boards, self.init_error, self.count_error, self.broken = boards, init_error, count_error, set(broken)
        self.calls: list[str] = []

    def nvmlInit(self):
        self.calls.append("init")
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self):
        self.calls.append("shutdown")
        if "init" not in self.calls or self.init_error:
            raise self.NVMLError("Uninitialized")

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"

    def nvmlDeviceGetCount(self):
        if self.count_error:
            raise self.count_error
        return len(self.boards)

    def nvmlDeviceGetHandleByIndex(self, i):
        if i in self.broken:
            raise self.NVMLError("GPU is lost")
        return i

    def nvmlDeviceGetName(self, h):
        return self.boards[h][0]

    def nvmlDeviceGetUUID(self, h):
        return self.boards[h][1]

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(total=self.boards[h][2], free=0, used=0)


def test_detect_gpus_reads_nvml(monkeypatch):
    nvml = FakeNvml([("NVIDIA A100-SXM4-80GB", "GPU-aaa", 80 * 2**30), (b"NVIDIA L4", b"GPU-bbb", 24 * GB),
                     ("NVIDIA L4", "GPU-lost", 24 * GB)], broken={2})
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    inventory = probe_gpus()
    assert inventory.devices == (GpuDevice(0, "GPU-aaa", "NVIDIA A100-SXM4-80GB", 80 * 2**30),
                                 GpuDevice(1, "GPU-bbb", "NVIDIA L4", 24 * GB))   # bytes decoded, lost GPU skipped
    assert inventory.note == "driver 550.54.15"
    assert nvml.calls == ["init", "shutdown"]


def test_missing_nvml_library_is_an_empty_inventory(monkeypatch):
    nvml = FakeNvml([], init_error=FakeNvml.NVMLError_LibraryNotFound())
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    inventory = probe_gpus()
    assert inventory.devices == () and inventory.note == "NVML Shared Library Not Found"
    assert detect_gpus() == []


def test_nvml_failing_midway_still_shuts_down(monkeypatch):
    nvml = FakeNvml([("NVIDIA L4", "GPU-x", 1)], count_error=FakeNvml.NVMLError("Driver Not Loaded"))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    inventory = probe_gpus()
    assert inventory.devices == () and inventory.note == "Driver Not Loaded"
    assert nvml.calls == ["init", "shutdown"]


def test_nvml_with_no_devices(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([]))
    inventory = probe_gpus()
    assert inventory.devices == () and inventory.note == "NVML found no GPUs (driver 550.54.15)"


def test_without_pynvml_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)   # makes `import pynvml` raise ImportError
    inventory = probe_gpus()
    assert inventory.devices == () and "nvidia-ml-py is not installed" in inventory.note
