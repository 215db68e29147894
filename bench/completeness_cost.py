"""What the completeness check adds to the ingest path, per instance (CPU, one core).

    .venv/bin/python bench/completeness_cost.py [REPEAT]

For real files of several shapes (pydicom's test files: a CT slice in Explicit VR, an MR in
Implicit VR, RLE, JPEG-LS, a 2-frame RGB RLE, a deflated CT), times
``gateway.ingest.completeness.check_complete`` on the dataset bytes a C-STORE carries, next to
``gateway.ingest.header.read_header`` (the header reading every instance already pays), as the
median of REPEAT runs (default 2000). No gateway, no disk: the pure cost of the check.
"""

from __future__ import annotations

import statistics
import sys
import time

from pydicom.data import get_testdata_file

from gateway.ingest.completeness import check_complete
from gateway.ingest.header import read_header
from gateway.ingest.part10 import split_part10

FILES = ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
         "SC_rgb_rle_2frame.dcm", "image_dfl.dcm"]


def median_us(fn, repeat: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        t = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1000


def main() -> None:
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print(f"{'file':28} {'bytes':>8} {'check_complete':>15} {'read_header':>12}")
    for name in FILES:
        data = open(get_testdata_file(name), "rb").read()
        part10 = split_part10(data)
        dataset, ts = memoryview(data)[part10.dataset_offset:], part10.transfer_syntax_uid
        check = median_us(lambda: check_complete(dataset, ts), repeat)
        header = median_us(lambda: read_header(dataset, ts), repeat)
        print(f"{name:28} {len(dataset):8} {check:12.1f} us {header:9.1f} us")


if __name__ == "__main__":
    main()
