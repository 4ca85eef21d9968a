"""MLflow tracking of studies (round trip through a local file store, read back with MLflow's own client) and
optuna-dashboard on a branch search's storage."""

import json
import os
import subprocess
import sys
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pandas as pd
import pytest
from tiny_study import STUDY as TINY
from tiny_study import write_study

import nas_mtl.tracking as tracking
from nas_mtl.cli import main
from nas_mtl.graph import SharingGraph
from nas_mtl.mlflow_store import file_store_allowed
from nas_mtl.search.proxy import graph_key
from nas_mtl.study import load_study, run_study

mlflow = pytest.importorskip("mlflow", reason='MLflow not installed: pip install -e ".[tracking]"')
from mlflow.tracking import MlflowClient  # noqa: E402

STUDY = (
    TINY.replace('name = "tiny"', 'name = "tracked"')
    .replace("seeds = [0, 1]", "seeds = [0]")
    .replace("epochs = 1", "epochs = 2")
    + """
[search.branch]
n_trials = 3
inherit = true
subset = 1.0
warmstart_epochs = 1
proxy_epochs = 1
batch_size = 32
reference = "hard"
[tracking]
mlflow = "MLFLOW_URI"
"""
)


def _write(folder: Path, uri: str, study: str = STUDY) -> Path:
    return write_study(folder, study.replace("MLFLOW_URI", uri))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A finished tiny study (baselines + a branch search) tracked to a local MLflow file store."""
    d = tmp_path_factory.mktemp("tracked")
    uri = f"file:{d / 'mlruns'}"
    spec = load_study(_write(d, uri))
    rows = run_study(spec, d / "run", progress=False)
    return d, spec, rows, uri


@pytest.fixture
def client_of(monkeypatch):
    """An MlflowClient on a URI (MLflow 3 opens a file store only when allowed by its environment variable)."""
    monkeypatch.setenv(tracking.FILE_STORE_ENV, "true")
    return lambda uri: MlflowClient(tracking_uri=uri)


def _all_runs(client, experiment: str) -> dict[str, object]:
    """The active MLflow runs of ``experiment`` by run sub-folder (the study's own run: "."); fails on a duplicate."""
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=1000)
    by_folder = {r.data.tags[tracking.FOLDER_TAG]: r for r in runs}
    assert len(by_folder) == len(runs), "two MLflow runs for one run folder"
    return by_folder


def _runs(client, experiment: str) -> dict[str, object]:
    """The active MLflow runs of ``experiment``'s arm runs and searches, by run sub-folder."""
    return {k: r for k, r in _all_runs(client, experiment).items() if k != tracking.STUDY_FOLDER}


def test_final_metrics_read_back_equal_each_runs_result_json(tracked, client_of):
    d, spec, rows, uri = tracked
    runs = _runs(client_of(uri), spec.name)
    folders = sorted(p.parent for p in (d / "run").glob("arms/**/row.json"))
    assert len(folders) == len(rows) == 4  # single-task left / right, hard, branch
    for folder in folders:
        run = runs[folder.relative_to(d / "run").as_posix()]
        assert run.info.status == "FINISHED"
        result = json.loads((folder / "result.json").read_text())
        expected = {
            f"{split}/{task}/{metric}": value
            for split in ("test", "val")
            for task, values in result[split].items()
            for metric, value in values.items()
        }
        # MLflow keeps float64 and its file store writes repr(value): the JSON float comes back bit for bit
        assert {k: v for k, v in run.data.metrics.items() if k.startswith(("test/", "val/"))} == expected
        assert run.data.metrics["train_seconds"] == result["train_seconds"]
        assert run.data.metrics["skipped_steps"] == result["skipped_steps"]
        row = json.loads((folder / "row.json").read_text())
        assert (run.data.metrics["params"], run.data.metrics["macs"]) == (row["params"], row["macs"])
        params = run.data.params
        assert (params["arm"], params["balancer"], params["seed"]) == (row["arm"], row["balancer"], str(row["seed"]))
        assert params["graph"] == graph_key(SharingGraph.from_dict(row["graph"]))
        assert params["train.epochs"] == str(spec.train.epochs) and params["train.lr"] == str(spec.train.lr)
        assert run.data.tags[tracking.KIND_TAG] == "arm"


def test_per_epoch_metrics_equal_curves_csv(tracked, client_of):
    d, spec, _, uri = tracked
    client = client_of(uri)
    runs = _runs(client, spec.name)
    for folder in sorted(p.parent for p in (d / "run").glob("arms/**/row.json")):
        run_id = runs[folder.relative_to(d / "run").as_posix()].info.run_id
        curves = pd.read_csv(folder / "curves.csv")
        assert len(curves) == spec.train.epochs * curves["task"].nunique()
        for (task, metric), g in curves.groupby(["task", "metric"]):
            for key, column in (
                (f"epoch/val/{task}/{metric}", "val_metric"),
                (f"epoch/train_loss/{task}", "train_loss"),
                (f"epoch/val_loss/{task}", "val_loss"),
            ):
                history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
                assert history == list(zip(g["epoch"], g[column])), key


def test_artifacts_hold_the_graph_json_and_figures(tracked, client_of, tmp_path):
    d, spec, _, uri = tracked
    client = client_of(uri)
    runs = _runs(client, spec.name)
    folder = d / "run" / "arms" / "hard" / "equal" / "seed0"
    run_id = runs["arms/hard/equal/seed0"].info.run_id
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"graph.json", "result.json", "row.json", "curves.csv", "figures"} <= names
    assert {a.path for a in client.list_artifacts(run_id, "figures")} == {"figures/topology.png", "figures/curves.png"}
    local = client.download_artifacts(run_id, "graph.json", str(tmp_path))
    assert SharingGraph.load(local) == SharingGraph.load(folder / "graph.json")


def test_a_search_is_one_run_with_its_options_cost_and_files(tracked, client_of):
    d, spec, _, uri = tracked
    client = client_of(uri)
    run = _runs(client, spec.name)["search/branch/seed0"]
    found = json.loads((d / "run" / "search" / "branch" / "seed0" / "search.json").read_text())
    assert run.data.tags[tracking.KIND_TAG] == "search"
    assert run.data.params["method"] == "branch" and run.data.params["n_trials"] == "3"
    assert run.data.params["seed"] == "0" and run.data.params["storage"] == "null"
    assert run.data.metrics["search_seconds"] == found["seconds"]
    assert run.data.metrics["info/trials/complete"] == found["info"]["trials"]["complete"]
    assert run.data.tags["optuna.storage"] == found["info"]["storage"]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"graph.json", "search.json", "history.png", "candidates"} <= names
    assert not any(n.startswith("warmstart") for n in names)  # the proxy's training run is not a search file


def test_resuming_a_tracked_study_logs_nothing_twice(tracked, client_of):
    d, spec, rows, uri = tracked
    client = client_of(uri)
    before = {k: r.info.run_id for k, r in _runs(client, spec.name).items()}
    assert len(before) == len(rows) + 1  # every arm run and the search
    again = run_study(spec, d / "run", progress=False)
    assert [r.test for r in again] == [r.test for r in rows]  # read back, not retrained
    assert {k: r.info.run_id for k, r in _runs(client, spec.name).items()} == before  # kept, not logged again


def test_a_tracking_failure_warns_and_the_next_run_completes_the_log(tracked, client_of, monkeypatch, tmp_path):
    """MLflow failing mid-way (here: on the first artifact) costs no result; mirroring again replaces the run it
    left unfinished and logs the rest, once each."""
    d, spec, rows, _ = tracked
    uri = f"file:{tmp_path / 'mlruns'}"
    real = MlflowClient.log_artifact

    def full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(MlflowClient, "log_artifact", full)
    with pytest.warns(UserWarning, match=r"tracking: MLflow at .*disk full.*run the study again"):
        assert tracking.mirror_study(d / "run", spec.name, uri) is None
    client = client_of(uri)
    cut_short = _runs(client, spec.name)
    assert len(cut_short) == 1 and next(iter(cut_short.values())).info.status == "FAILED"
    monkeypatch.setattr(MlflowClient, "log_artifact", real)
    assert tracking.mirror_study(d / "run", spec.name, uri) == tracking.Mirrored(logged=len(rows) + 1, kept=0)
    runs = _runs(client, spec.name)
    assert len(runs) == len(rows) + 1 and {r.info.status for r in runs.values()} == {"FINISHED"}


def test_study_results_survive_a_failing_tracking_server(tracked, monkeypatch):
    d, spec, rows, _ = tracked

    def broken(*args, **kwargs):
        raise ConnectionError("API request to endpoint /api/2.0/mlflow/experiments/get-by-name failed")

    monkeypatch.setattr(tracking, "_mirror", broken)
    with pytest.warns(UserWarning, match="tracking: MLflow"):
        again = run_study(spec, d / "run", progress=False)
    assert [r.test for r in again] == [r.test for r in rows]


def test_missing_mlflow_stops_before_training_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # import fails as when not installed
    spec = load_study(_write(tmp_path, f"file:{tmp_path / 'mlruns'}"))
    with pytest.raises(ValueError, match=r'tracking\.mlflow: MLflow is not installed; pip install -e "\.\[tracking\]"'):
        run_study(spec, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ("mlflow = 3", r"study\.toml: tracking\.mlflow: expected a string or none"),
        ('mlflow = ""', r"study\.toml: tracking\.mlflow: .*tracking URI"),
        ('wandb = "x"', r"study\.toml: tracking\.wandb: unknown option; allowed: mlflow"),
    ],
)
def test_bad_tracking_tables_name_the_key(tmp_path, table, match):
    study = STUDY.replace('mlflow = "MLFLOW_URI"', table)
    with pytest.raises(ValueError, match=match):
        load_study(_write(tmp_path, "", study))


def test_a_study_without_a_tracking_table_is_not_tracked(tmp_path):
    spec = load_study(_write(tmp_path, "", STUDY.split("[tracking]")[0]))
    assert spec.tracking == tracking.TrackingConfig(mlflow=None)


def test_mlflow_flag_overrides_the_study_file(tracked, client_of, tmp_path, capsys):
    d, spec, rows, _ = tracked
    uri = f"file:{tmp_path / 'other'}"
    argv = ["study", str(d / "study.toml"), "--out", str(d / "run"), "--no-progress", "--mlflow", uri]
    assert main(argv) == 0
    assert len(_runs(client_of(uri), spec.name)) == len(rows) + 1


def test_the_study_run_holds_the_report_and_verdict_and_parents_every_run(tracked, client_of, tmp_path):
    """`nas-mtl study` ends by finishing the study's own MLflow run: the report's files as artifacts, each row's mean
    Δm and interval from summary.csv as metrics, the verdict's conclusion as its description; every arm run and
    search is its child; the experiment opens as model training (not GenAI) in MLflow's UI."""
    d, spec, rows, _ = tracked
    uri = f"file:{tmp_path / 'parent'}"
    argv = ["study", str(d / "study.toml"), "--out", str(d / "run"), "--no-progress", "--mlflow", uri]
    assert main(argv) == 0
    client = client_of(uri)
    experiment = client.get_experiment_by_name(spec.name)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    runs = _all_runs(client, spec.name)
    study = runs.pop(tracking.STUDY_FOLDER)
    assert study.info.status == "FINISHED" and study.data.tags[tracking.KIND_TAG] == "study"
    assert {r.data.tags[tracking.PARENT_TAG] for r in runs.values()} == {study.info.run_id}
    names = {a.path for a in client.list_artifacts(study.info.run_id)}
    assert {"report.md", "report.html", "summary.csv", "runs.csv", "verdict.json", "figures"} <= names
    summary = pd.read_csv(d / "run" / "report" / "summary.csv")
    for _, row in summary.iterrows():
        key = f"delta_m/{row['arm']}/{row['balancer']}/mean"
        assert study.data.metrics[key] == pytest.approx(row["delta_m"], rel=1e-12, abs=1e-12)
    verdict = json.loads((d / "run" / "report" / "verdict.json").read_text())
    assert verdict["conclusion"] and " ".join(verdict["conclusion"]) in study.data.tags[tracking.NOTE_TAG]
    assert study.data.tags["nas_mtl.recommended"] == verdict["recommended"]


def test_each_arm_run_logs_the_reports_delta_m(tracked, client_of):
    """After the study, every arm run's latest ``delta_m`` is its Δm in the report's runs table (against all the
    single-task nets), the single-task nets of a seed sharing their seed's."""
    from nas_mtl.layout import load_rows
    from nas_mtl.report import runs_table

    d, spec, _, uri = tracked
    runs = _runs(client_of(uri), spec.name)
    table = runs_table(load_rows(d / "run"))
    checked = 0
    for folders, value in zip(table["run_dir"], table["delta_m"]):
        for folder in folders.split(";"):
            assert runs[folder].data.metrics["delta_m"] == pytest.approx(value, rel=1e-12, abs=1e-12), folder
            checked += 1
    assert checked == 4


def _get(app, path: str) -> dict:
    environ: dict = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status == ["200 OK"], (status, body[:300])
    return json.loads(body)


def test_optuna_dashboard_loads_a_branch_searchs_storage(tracked):
    """The README's `optuna-dashboard sqlite:///RUN/search/branch/seed0/study.db`: its API lists the study."""
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    d, _, _, _ = tracked
    db = d / "run" / "search" / "branch" / "seed0" / "study.db"
    url = f"sqlite:///{db}"
    app = optuna_dashboard.wsgi(url)
    app.catchall = False  # an error in the app raises here instead of becoming a 500 page
    studies = _get(app, "/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["branch"]
    trials = _get(app, f"/api/studies/{studies[0]['study_id']}")["trials"]
    reference = optuna.load_study(study_name="branch", storage=url).get_trials(deepcopy=False)
    assert len(trials) == len(reference) == 3  # n_trials
    assert [t["number"] for t in trials] == [t.number for t in reference]


def test_a_sqlite_store_keeps_its_artifacts_beside_its_database_not_in_the_working_folder(
    tracked, tmp_path, monkeypatch
):
    """MLflow's default artifact root for a database store is ./mlruns of the folder the command ran in; a study
    logging to sqlite:///DIR/mlflow.db puts them in DIR/mlartifacts, and reads back."""
    d, spec, rows, _ = tracked
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    assert tracking.mirror_study(d / "run", spec.name, uri) == tracking.Mirrored(logged=len(rows) + 1, kept=0)
    assert not (work / "mlruns").exists() and (tmp_path / "store" / "mlartifacts").is_dir()
    client = MlflowClient(tracking_uri=uri)
    run = next(iter(_runs(client, spec.name).values()))
    assert client.list_artifacts(run.info.run_id)  # the artifacts read back from where they were put


LIVE = (
    TINY.replace('name = "tiny"', 'name = "live"').replace("epochs = 1", "epochs = 2")
    + """
[tracking]
mlflow = "MLFLOW_URI"
"""
)


@pytest.mark.parametrize("store", ["file", "sqlite"])
def test_each_run_is_in_mlflow_with_its_delta_m_before_the_next_run_finishes(store, tmp_path, client_of):
    """Live tracking, in a file store and in sqlite: the study logs each run as it finishes, so every MLflow run
    was logged (tag ``nas_mtl.logged_at``, the clock of the logging) before the row of the next run to finish was
    written, i.e. within the next run's first epoch; each multi-task run has a Δm from its first logging on (the
    single-task nets of its seed run first)."""
    uri = f"file:{tmp_path / 'mlruns'}" if store == "file" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_study(_write(tmp_path, uri, LIVE))
    rows = run_study(spec, tmp_path / "run", progress=False)
    client = client_of(uri)
    logged = _runs(client, spec.name)
    finished = sorted(
        (p.stat().st_mtime, p.parent.relative_to(tmp_path / "run").as_posix())
        for p in (tmp_path / "run").glob("arms/**/row.json")
    )
    assert len(finished) == len(rows) == 6 and set(logged) == {key for _, key in finished}
    for (_, key), (next_done, _) in zip(finished, finished[1:]):
        assert float(logged[key].data.tags[tracking.LOGGED_AT_TAG]) <= next_done + 0.5, key  # 0.5 s: file times
    # the study run finished with the report: with 2 seeds, every row's mean and interval (each key a leaf, which a
    # file store needs: it keeps a key as a file)
    from nas_mtl.report import write_report

    files = write_report(tmp_path / "run")
    assert tracking.log_study(tmp_path / "run", spec.name, uri)
    study = _all_runs(client, spec.name)[tracking.STUDY_FOLDER]
    assert study.info.status == "FINISHED"
    summary = pd.read_csv(files["summary.csv"])
    assert summary["delta_m ci_low"].notna().all()
    for _, row in summary.iterrows():
        for part, column in (("mean", "delta_m"), ("ci_low", "delta_m ci_low"), ("ci_high", "delta_m ci_high")):
            key = f"delta_m/{row['arm']}/{row['balancer']}/{part}"
            assert study.data.metrics[key] == pytest.approx(row[column], rel=1e-12, abs=1e-12)
    for key, run in logged.items():
        if "/hard/" in key:
            history = client.get_metric_history(run.info.run_id, "delta_m")
            first = min(history, key=lambda m: m.timestamp)
            assert first.step >= 2 and abs(first.timestamp / 1000 - float(run.data.tags[tracking.LOGGED_AT_TAG])) < 5


def test_a_damaged_store_is_one_warning_line_and_the_study_completes(tmp_path):
    """A file store whose experiment lost its meta.yaml (MLflow logs "Malformed experiment" with a traceback):
    the study finishes, exit 0, and the command's stderr says it in one warning line, once, with no traceback."""
    store = tmp_path / "mlruns"
    uri = f"file:{store}"
    with file_store_allowed(uri):
        client = MlflowClient(tracking_uri=uri)
        damaged = client.create_experiment("other")
    (store / damaged / "meta.yaml").unlink()
    study = _write(tmp_path, uri, LIVE.replace("seeds = [0, 1]", "seeds = [0]").replace("epochs = 2", "epochs = 1"))
    argv = [sys.executable, "-m", "nas_mtl.cli", "study", str(study), "--out", str(tmp_path / "run"), "--no-progress"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": ""})
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Malformed experiment" in done.stderr
    warned = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert len(warned) == 1 and warned[0].startswith("nas-mtl: warning: tracking: MLflow at"), done.stderr
    assert (tmp_path / "run" / "report" / "report.md").is_file()


def test_a_distributed_studys_worker_logs_each_run_it_trains_as_it_finishes(tmp_path, client_of):
    """The job loop logs a run trained from scratch before it claims the next job (not at the study's end): the
    MLflow run of every arm folder was logged before the next row was written."""
    from nas_mtl.study import run_distributed_study

    uri = f"file:{tmp_path / 'mlruns'}"
    spec = load_study(_write(tmp_path, uri, LIVE.replace("seeds = [0, 1]", "seeds = [0]")))
    run_distributed_study(spec, tmp_path / "run", f"sqlite:///{tmp_path / 'jobs.db'}", progress=False)
    logged = _runs(client_of(uri), spec.name)
    finished = sorted(
        (p.stat().st_mtime, p.parent.relative_to(tmp_path / "run").as_posix())
        for p in (tmp_path / "run").glob("arms/**/row.json")
    )
    assert len(finished) == 3 and set(logged) == {key for _, key in finished}
    for (_, key), (next_done, _) in zip(finished, finished[1:]):
        assert float(logged[key].data.tags[tracking.LOGGED_AT_TAG]) <= next_done + 0.5, key
