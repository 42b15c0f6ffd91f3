"""DVC behaviour of the pipeline, on a temporary git + DVC copy fed the tiny CTC model.

One `dvc repro` builds the copy (module fixture, ~15 s); every test starts from that committed,
up-to-date state (`repo` fixture: `git reset --hard` + `dvc checkout`) and checks that DVC reruns
exactly what an edit affects, that experiments queue and run, and that a clone pulls the cache
from a shared remote and needs no rebuild.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import minirepo
import pytest
import yaml
from minirepo import commit_all, dvc, git, output, ran_stages

pytestmark = [
    pytest.mark.dvc,
    pytest.mark.skipif(shutil.which("git") is None, reason="needs git"),
    pytest.mark.skipif(not (minirepo.BIN / "dvc").exists(), reason="needs dvc in the venv"),
]

DATA = {"synthetic@clean", "synthetic@hard", "folder@mine"}
PER_CLASS = ("build", "evaluate", "bundle", "verify", "clients", "bench", "levers")
ALL_STAGES = {
    "model",
    *DATA,
    "preprocess",
    *(f"{verb}@{t}" for verb in PER_CLASS for t in minirepo.TARGETS),
    "baselines",
    "serve_bench",
    "report",
}
BUNDLES = {f"bundle@{t}" for t in minirepo.TARGETS}
QUALITY_KEY = re.compile(r"\.(size_mb|accuracy|agreement)$")
LATENCY_KEY = re.compile(r"\.(warm_p50_ms|warm_p95_ms|cold_start_ms|model_p50_ms)$")


def class_stages(target: str) -> set[str]:
    """What an edit to one class's recipe or override must rerun: its chain, the report that
    reads every class's metrics, and the other classes' bundle stages (a class may ship another
    class's model as its fallback, so every bundle depends on every build). Those rebuild the
    same bytes, so nothing after them reruns."""
    return {f"{verb}@{target}" for verb in PER_CLASS} | {"report"} | BUNDLES


def status(repo: Path) -> dict[str, Any]:
    return json.loads(dvc(repo, "status", "--json").stdout or "{}")


def assert_clean(repo: Path, what: str) -> None:
    st = status(repo)
    assert st == {}, f"{what}: `dvc status` is not clean:\n{json.dumps(st, indent=2)}"


def repro(repo: Path) -> tuple[set[str], str]:
    p = dvc(repo, "repro")
    return ran_stages(p), output(p)


def edit_yaml(path: Path, edit) -> None:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline, reproduced once and committed (metrics and reports are cache: false,
    so git holds them)."""
    repo = minirepo.make_repo(tmp_path_factory.mktemp("dvc") / "repo")
    t0 = time.perf_counter()
    ran, out = repro(repo)
    seconds = time.perf_counter() - t0
    assert ran == ALL_STAGES, f"first repro ran {sorted(ran)}, expected every stage:\n{out}"
    print(f"\nfirst dvc repro of the tiny pipeline: {seconds:.1f}s")
    commit_all(repo, "built")
    assert_clean(repo, "after the first repro")
    return repo


@pytest.fixture
def repo(built: Path) -> Path:
    """The built repository, back at its committed, up-to-date state."""
    git(built, "reset", "-q", "--hard", "HEAD")
    git(built, "clean", "-q", "-fd")  # not -x: DVC's outputs are git-ignored and stay
    dvc(built, "checkout", "--force")
    assert_clean(built, "before the test")
    assert git(built, "status", "--porcelain").stdout == "", "git work tree not clean"
    return built


def test_second_repro_runs_nothing(repo: Path) -> None:
    ran, out = repro(repo)
    assert not ran, f"an unchanged pipeline reran {sorted(ran)}:\n{out}"
    assert "up to date" in out.lower(), f"`dvc repro` did not say it is up to date:\n{out}"
    assert_clean(repo, "after the second repro")
    assert git(repo, "status", "--porcelain").stdout == "", "a no-op repro changed tracked files"


def test_override_reruns_only_that_class(repo: Path) -> None:
    def per_channel(params: dict[str, Any]) -> None:
        params["overrides"]["low"] = {"passes": {"quantize_dynamic": {"per_channel": True}}}

    edit_yaml(repo / "params.yaml", per_channel)
    st = status(repo)
    assert set(st) == {"build@low"}, f"dvc status after the edit:\n{st}"

    ran, out = repro(repo)
    assert ran == class_stages("low"), (
        f"repro ran (or restored from the run-cache) {sorted(ran)}:\n{out}"
    )
    assert_clean(repo, "after the repro")

    text = output(dvc(repo, "metrics", "diff"))  # HEAD (the baseline) vs the workspace
    lines = text.splitlines()
    assert any(line.startswith("metrics/low.json") for line in lines), text
    for other in ("metrics/high.json", "metrics/mid.json", "metrics/preprocess.json"):
        assert other not in text, f"{other} changed though only low was rebuilt:\n{text}"

    diff = json.loads(dvc(repo, "metrics", "diff", "--json").stdout)
    # levers@low reran on the new build too; on the tiny model its figures (sub-0.1 ms times
    # to 3 decimals, 4 images a set) may come out the same, so its file may or may not differ
    assert set(diff) - {"metrics/levers/low.json"} == {"metrics/low.json"}, sorted(diff)
    keys = set(diff["metrics/low.json"])
    assert keys, "metrics/low.json has no changed metric"
    # per-channel scales change the final model's bytes and outputs; timings always move
    final = {k for k in keys if k.startswith("variants.final.") and QUALITY_KEY.search(k)}
    assert any(".sets." in k for k in keys), f"no per-set accuracy key changed: {sorted(keys)}"
    assert final, f"no size/accuracy/agreement change of low's final model: {sorted(keys)}"
    timed = {k for k in keys if LATENCY_KEY.search(k)}
    assert timed, f"no latency key among the changed metrics/low.json keys: {sorted(keys)}"
    recipe = json.loads((repo / "build/low/model/recipe.json").read_text())
    quantize = next(
        p["quantize_dynamic"] for p in recipe["recipe"]["passes"] if "quantize_dynamic" in p
    )
    assert quantize["per_channel"] is True, f"the override did not reach the build: {recipe}"


def test_another_machines_facts_rerun_only_the_measuring_stages(repo: Path) -> None:
    """make build rewrites machine.json; another x86 CPU (same `numerics`) remeasures what it
    times and what runs its own kernels (clients: onnxruntime-node), and keeps the texts and
    scores every x86 machine computes alike (build ... verify, levers)."""
    facts = json.loads((repo / "machine.json").read_text())
    other = {**facts, "cpu": "another cpu", "isa": ["avx2"], "usable_cores": 1}
    (repo / "machine.json").write_text(json.dumps(other, indent=2) + "\n")
    ran, out = repro(repo)
    measuring = {"preprocess", "serve_bench"}
    measuring |= {f"{v}@{t}" for v in ("clients", "bench") for t in minirepo.TARGETS}
    assert ran == measuring | {"report"}, f"repro ran {sorted(ran)}:\n{out}"
    assert_clean(repo, "after the repro")


def test_another_architectures_numerics_make_every_int8_computing_stage_stale(
    repo: Path,
) -> None:
    facts = json.loads((repo / "machine.json").read_text())
    other = {**facts, "numerics": {"arch": "aarch64", "int8": ["asimddp"]}}
    (repo / "machine.json").write_text(json.dumps(other, indent=2) + "\n")
    # every per-class stage: the int8 computing ones by `numerics`, the others by the file
    stale = {f"{v}@{t}" for v in PER_CLASS for t in minirepo.TARGETS}
    stale |= {"baselines", "preprocess", "serve_bench"}
    assert set(status(repo)) == stale, json.dumps(status(repo), indent=2)


def test_recipe_edit_reruns_only_that_class(repo: Path) -> None:
    def fewer_chars(recipe: dict[str, Any]) -> None:
        recipe["passes"] = [{"fix_output_shape": {}}, {"prune_charset": {"chars": "abcd"}}]

    edit_yaml(repo / "configs/mid.yaml", fewer_chars)
    ran, out = repro(repo)
    assert ran == class_stages("mid"), (
        f"repro ran (or restored from the run-cache) {sorted(ran)}:\n{out}"
    )
    assert_clean(repo, "after the repro")
    charset = json.loads((repo / "bundles/mid/charset.json").read_text())
    assert charset == ["", "a", "b", "c", "d"], f"mid bundle charset {charset}"
    diff = json.loads(dvc(repo, "metrics", "diff", "--json").stdout)
    assert set(diff) <= {"metrics/mid.json"}, f"changed metric files: {sorted(diff)}"


def _exp_rows(repo: Path) -> list[dict[str, Any]]:
    rows = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    return [
        rev for row in rows for exp in row.get("experiments") or [] for rev in exp.get("revs") or []
    ]


def _queue_state(repo: Path, name: str) -> str | None:
    text = dvc(repo, "queue", "status").stdout
    for line in text.splitlines():
        cols = line.split()
        if name in cols:
            return cols[-1]
    return None


def _exp_file(repo: Path, name: str, path: str) -> dict[str, Any]:
    """A file as the experiment `name` committed it."""
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    ref = next(r for r in refs if r.endswith(f"/{name}"))
    return json.loads(git(repo, "show", f"{ref}:{path}").stdout)


def test_queued_experiment_runs(repo: Path) -> None:
    """A queued experiment runs in a copy under .dvc/tmp that has none of git's ignored files:
    it must still find the emulators and the JS clients' packages this checkout installed."""
    name = "tiny-per-channel"
    key = "overrides.low.passes.quantize_dynamic.per_channel"
    phone = "overrides.low.profiles=[here, arm]"  # verify and the vectors emulate it
    # the experiment's copy holds what git holds: the linked installs must not be in it
    for link in (".emu", "clients/js/node_modules"):
        assert git(repo, "check-ignore", "-q", link, check=False).returncode == 0, link
    queued = dvc(repo, "exp", "run", "--queue", "--name", name, "-S", f"{key}=true", "-S", phone)
    assert name in output(queued), output(queued)
    assert _queue_state(repo, name) == "Queued", dvc(repo, "queue", "status").stdout

    dvc(repo, "queue", "start", "-j", "1")
    deadline, state = time.monotonic() + 300, None
    try:
        while time.monotonic() < deadline:
            state = _queue_state(repo, name)
            if state in ("Success", "Failed"):
                break
            time.sleep(1)
    finally:
        if state not in ("Success", "Failed"):
            dvc(repo, "queue", "kill", name, check=False)
        dvc(repo, "queue", "stop", check=False)  # the worker also exits once the queue is empty
    logs = output(dvc(repo, "queue", "logs", name, check=False))
    assert state == "Success", f"queued experiment ended as {state!r}:\n{logs}"

    revs = [r for r in _exp_rows(repo) if r.get("name") == name]
    assert revs, f"`dvc exp show` does not list {name}:\n{_exp_rows(repo)}"
    data = revs[0]["data"]
    params = data["params"]["params.yaml"]["data"]
    assert params["overrides"]["low"]["passes"]["quantize_dynamic"]["per_channel"] is True
    assert params["overrides"]["high"] == {} and params["overrides"]["mid"] == {}
    low = data["metrics"]["metrics/low.json"]["data"]
    final = low["variants"]["final"]
    assert {"size_mb", "sets", "warm_p50_ms"} <= set(final), sorted(final)
    assert set(final["sets"]) == {"clean", "hard", "mine"}

    arm = _exp_file(repo, name, "verify/low.json")["profiles"]["arm"]
    if (repo / ".emu").exists():  # make test installs them
        assert arm["how"] == "emulated" and arm["sets"], arm
    clients = _exp_file(repo, name, "verify/clients/low.json")["clients"]
    if (repo / "clients" / "js" / "node_modules").exists():
        assert not any("run make js" in (c["reason"] or "") for c in clients.values()), clients

    table = dvc(repo, "exp", "show", "--csv", "--only-changed").stdout
    assert name in table and key in table, f"`dvc exp show --only-changed`:\n{table}"
    # the experiment ran in its own directory: the workspace is untouched
    assert_clean(repo, "after the experiment")
    assert git(repo, "status", "--porcelain").stdout == ""


def test_clone_pulls_from_shared_remote(repo: Path, tmp_path: Path) -> None:
    head = git(repo, "rev-parse", "HEAD").stdout.strip()
    remote = tmp_path / "shared-cache"
    remote.mkdir()
    dvc(repo, "remote", "add", "-d", "shared", str(remote))
    git(repo, "add", ".dvc/config")
    git(repo, "commit", "-q", "-m", "shared cache")
    try:
        dvc(repo, "push")
        clone = tmp_path / "clone"
        git(tmp_path, "clone", "-q", str(repo), str(clone))
        config = (clone / ".dvc/config").read_text()
        assert str(remote) in config, f"remote not in the clone's config:\n{config}"

        pulled = dvc(clone, "pull")
        assert (clone / "bundles/low").is_dir(), output(pulled)
        assert_clean(clone, "after dvc pull in the clone")
        ran, out = repro(clone)
        assert not ran, f"the clone rebuilt {sorted(ran)} after pulling:\n{out}"
        assert_clean(clone, "after dvc repro in the clone")
        assert git(clone, "status", "--porcelain").stdout == "", "repro changed the clone"
    finally:
        git(repo, "reset", "-q", "--hard", head)  # the next test sees no remote


def test_a_forced_rebuild_changes_no_hash_and_reruns_nothing_after_it(repo: Path) -> None:
    """A pass decides from its model, options and data only; timings live outside the model
    folder and the .ort converter runs without address randomization, so rebuilding a class
    gives byte-identical outputs and DVC hashes."""
    before = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    dvc(repo, "repro", "-f", "-s", "build@low")
    dvc(repo, "repro", "-f", "-s", "bundle@low")
    after = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage, path in (("build@low", "build/low/model"), ("bundle@low", "bundles/low")):
        old = next(o for o in before[stage]["outs"] if o["path"] == path)
        new = next(o for o in after[stage]["outs"] if o["path"] == path)
        assert new["md5"] == old["md5"], f"{path} changed on a forced rebuild"
    ran, out = repro(repo)
    assert ran <= BUNDLES | {"report"}, f"after identical rebuilds repro ran {sorted(ran)}:\n{out}"
    ran, out = repro(repo)
    assert not ran, out


def test_editing_one_image_of_a_folder_source_reruns_that_source_and_what_follows(
    repo: Path,
) -> None:
    image = sorted((repo / "captchas" / "mine").glob("*.png"))[0]
    data = bytearray(image.read_bytes())
    image.write_bytes(bytes(data) + b"\0")  # same picture, other bytes: a changed dependency
    st = status(repo)
    assert set(st) == {"folder@mine"}, f"dvc status after editing one image:\n{st}"
    ran, out = repro(repo)
    assert "folder@mine" in ran and not ran & {"model", "synthetic@clean", "synthetic@hard"}, out
    assert_clean(repo, "after the repro")


def test_replacing_the_model_file_in_place_reruns_the_model_stage(repo: Path) -> None:
    import tiny

    from stages import modelio

    other = tiny.tiny_ctc(classes=7, seed=5, wrong_output_shape=False)
    modelio.save(other, repo / "models" / "input" / "tiny.onnx")
    st = status(repo)
    assert "model" in st and not set(st) & DATA, f"dvc status after replacing the model:\n{st}"
