"""The resolved config of every job at every scale is fixed by a fixture (issue 9, item 5): changing how
params files are written (defaults, per-scale patches, shared presets) must not change what any job trains.

`tests/fixtures/job_fingerprints.json` maps ``<experiment>/<scale>/<job id>`` to the SHA-256 of the job's
`lop.plan.job_fingerprint` (its settings' fully resolved method config and problem, seeds and command
line). A change that is meant to change a job regenerates it with ``LOP_WRITE_GOLDEN=1`` and says why.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from conftest import REPO

from lop.params import expand_jobs, list_param_files, load_params
from lop.plan import job_fingerprint

FIXTURE = Path(__file__).parent / "fixtures" / "job_fingerprints.json"


def fingerprints() -> dict[str, str]:
    out = {}
    for path in list_param_files(REPO / "params"):
        params = load_params(path)
        for scale in params.data.scales:
            for job in expand_jobs(params, scale):
                fp = job_fingerprint(params, scale, job).replace(str(REPO) + "/", "")
                out[f"{params.experiment}/{scale}/{job.job_id}"] = hashlib.sha256(fp.encode()).hexdigest()
    return out


def test_every_job_resolves_to_its_recorded_config():
    got = fingerprints()
    if os.environ.get("LOP_WRITE_GOLDEN") == "1":
        FIXTURE.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    expected = json.loads(FIXTURE.read_text())
    assert sorted(set(expected) - set(got)) == [], "jobs disappeared"
    assert sorted(set(got) - set(expected)) == [], "new jobs (regenerate the fixture if intended)"
    changed = sorted(k for k in got if got[k] != expected[k])
    assert not changed, f"resolved configs changed for {len(changed)} jobs, e.g. {changed[:3]}"
