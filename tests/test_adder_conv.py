"""Tests of AdderConv2d, adderize and AdderNet's adaptive learning rate (addernet_cuda/nn)."""

import copy
import io
import math
import os
import pickle
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import addernet_cuda
from addernet_cuda import AdderConv2d, adderize, reference

CONFIGS = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=1, bias=False),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding="same", dilation=2, groups=2),
    dict(in_channels=4, out_channels=6, kernel_size=4, padding="same"),  # asymmetric 'same'
    dict(in_channels=4, out_channels=6, kernel_size=3, padding="valid"),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4, padding_mode="reflect"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=(2, 1), padding_mode="circular"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="replicate"),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_constructor_attributes_and_state_dict_match_conv2d(cfg):
    torch.manual_seed(0)
    conv = nn.Conv2d(**cfg)
    adder = AdderConv2d(**cfg)
    for attr in (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
        "transposed",
        "output_padding",
    ):
        assert getattr(adder, attr) == getattr(conv, attr), attr
    assert {k: v.shape for k, v in adder.state_dict().items()} == {
        k: v.shape for k, v in conv.state_dict().items()
    }
    adder.load_state_dict(conv.state_dict())
    torch.testing.assert_close(adder.weight, conv.weight)
    x = torch.randn(2, 4, 9, 8)
    assert adder(x).shape == conv(x).shape


@pytest.mark.parametrize("cfg", CONFIGS)
def test_forward_matches_reference_on_padded_input(cfg):
    torch.manual_seed(1)
    adder = AdderConv2d(**cfg, dtype=torch.float64)
    conv = nn.Conv2d(**cfg, dtype=torch.float64)  # its padding arithmetic is the yardstick
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    pad = conv._reversed_padding_repeated_twice
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = F.pad(x, pad, mode=mode)
    want = reference.adder2d(
        xp, adder.weight, adder.bias, adder.stride, 0, adder.dilation, adder.groups
    )
    torch.testing.assert_close(adder(x), want)


def test_defaults_and_init():
    layer = AdderConv2d(16, 32, 3)
    assert layer.eta == 0.2 and layer.input_grad == "hardtanh" and layer.bias is not None
    assert layer.padding_mode == "zeros" and layer.stride == (1, 1)
    # The official code draws weights from N(0, 1).
    assert abs(layer.weight.std().item() - 1.0) < 0.1 and abs(layer.weight.mean().item()) < 0.1
    assert "eta=0.2" in repr(layer)
    assert not isinstance(layer, nn.Conv2d)
    layer.eta = None
    assert layer.eta is None
    with pytest.raises(ValueError, match="eta must be a positive"):
        layer.eta = -1.0
    with pytest.raises(ValueError, match="input_grad must be"):
        AdderConv2d(4, 4, 3, input_grad="sign")
    with pytest.raises(ValueError, match="padding='same' is not supported for strided"):
        AdderConv2d(4, 4, 3, stride=2, padding="same")


def test_device_dtype_copies_and_reassignment_keep_the_tag(tmp_path):
    layer = AdderConv2d(4, 4, 3, dtype=torch.float64, eta=0.3)
    assert layer.weight.dtype == torch.float64
    tagged = lambda m: addernet_cuda.nn.adaptive_lr.adaptive_lr_eta(m.weight)  # noqa: E731
    clone = copy.deepcopy(layer)
    assert clone.eta == 0.3 and tagged(clone) == 0.3
    layer.float()
    assert tagged(layer) == 0.3
    layer.weight = nn.Parameter(torch.randn(4, 4, 3, 3))
    assert tagged(layer) == 0.3
    layer.load_state_dict({"weight": torch.randn(4, 4, 3, 3), "bias": torch.randn(4)}, assign=True)
    assert tagged(layer) == 0.3
    torch.save(layer, tmp_path / "layer.pt")
    loaded = _load_module(tmp_path / "layer.pt")
    assert loaded.eta == 0.3 and tagged(loaded) == 0.3


def _stepped_grad_norm(layer):
    """The norm of the weight gradient the optimizer sees after the step pre-hook."""
    opt = torch.optim.SGD(layer.parameters(), lr=0.0)
    x = torch.randn(2, 4, 9, 9, dtype=layer.weight.dtype, device=layer.weight.device)
    layer(x).sum().backward()
    opt.step()
    return layer.weight.grad.norm().item()


def _meta_to_empty(layer):
    with torch.device("meta"):
        built = AdderConv2d(4, 6, 3, eta=0.2)
    built = built.to_empty(device="cpu")
    built.reset_parameters()
    return built


def _swapped_double(layer):
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        return layer.double()
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)


def _assign_state(layer):
    state = {"weight": torch.randn(6, 4, 3, 3), "bias": torch.randn(6)}
    layer.load_state_dict(state, assign=True)
    return layer


def _to_meta_and_back(layer):
    layer = layer.to("meta").to_empty(device="cpu")
    layer.reset_parameters()
    return layer


def _pickled(layer):
    return pickle.loads(pickle.dumps(layer))


def _load_module(file):
    """A whole saved AdderConv2d, loaded without running pickled code (weights_only, with the
    one class it needs allowed)."""
    with torch.serialization.safe_globals([addernet_cuda.AdderConv2d]):
        return torch.load(file, weights_only=True)


def _saved(layer):
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    return _load_module(buffer)


def _new_parameter(layer):
    layer.weight = nn.Parameter(torch.randn(6, 4, 3, 3))
    return layer


REBUILDS = {
    "meta-to_empty": _meta_to_empty,
    "to-meta-and-back": _to_meta_and_back,
    "swap-double": _swapped_double,
    "double": lambda m: m.double(),
    "half-and-back": lambda m: m.half().float(),
    "share_memory": lambda m: m.share_memory(),
    "load_state_dict-assign": _assign_state,
    "deepcopy": copy.deepcopy,
    "pickle": _pickled,
    "torch-save-load": _saved,
    "assign-parameter": _new_parameter,
    "in-sequential-deepcopy": lambda m: copy.deepcopy(nn.Sequential(m))[0],
}


@pytest.mark.parametrize("rebuild", REBUILDS.values(), ids=REBUILDS.keys())
def test_adaptive_lr_survives_every_parameter_rebuild(rebuild):
    """After any way of rebuilding the weight Parameter, the step still rescales the gradient
    to eta * sqrt(numel) (it used to be silently skipped: a norm of about 1400)."""
    torch.manual_seed(0)
    layer = rebuild(AdderConv2d(4, 6, 3, eta=0.2))
    assert layer.eta == 0.2
    assert addernet_cuda.nn.adaptive_lr.adaptive_lr_eta(layer.weight) == 0.2
    assert _stepped_grad_norm(layer) == pytest.approx(0.2 * math.sqrt(6 * 4 * 9), rel=1e-5)
    layer.eta = None
    layer.zero_grad()
    assert _stepped_grad_norm(layer) > 100  # off: the raw gradient


@pytest.mark.parametrize("eta", ["0.2", True, torch.tensor(0.2), [0.2]])
def test_eta_must_be_a_number(eta):
    with pytest.raises(TypeError, match="eta must be a positive finite number or None"):
        AdderConv2d(4, 6, 3, eta=eta)
    with pytest.raises(TypeError, match="eta must be a positive finite number or None"):
        addernet_cuda.set_adaptive_lr(nn.Parameter(torch.ones(1)), eta)
    for bad in (0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eta must be a positive"):
            AdderConv2d(4, 6, 3, eta=bad)
    assert AdderConv2d(4, 6, 3, eta=1).eta == 1.0


class PlainNet(nn.Module):
    """conv -> adder -> conv, with BatchNorm only after the first adder layer."""

    def __init__(self, bias=True):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, bias=bias),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 1, bias=False),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(8, 10, 1)

    def forward(self, x):
        return self.classifier(self.body(self.stem(x))).mean((2, 3))


def test_adderize_keeps_first_and_classifier_and_warns():
    model = PlainNet(bias=True)
    with pytest.warns(UserWarning, match=r"not followed by a normalisation layer: \['body.3'\]"):
        adderize(model)
    assert type(model.stem) is nn.Conv2d and type(model.classifier) is nn.Conv2d
    assert isinstance(model.body[0], AdderConv2d) and model.body[0].bias is not None
    assert isinstance(model.body[3], AdderConv2d) and model.body[3].bias is None
    assert model.body[0].padding == (1, 1)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_adderize_options():
    model = PlainNet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adderize(
            model,
            keep_first=False,
            keep_classifier=False,
            exclude=["body.3"],
            eta=None,
            input_grad="exact",
        )
    assert isinstance(model.stem, AdderConv2d) and isinstance(model.classifier, AdderConv2d)
    assert type(model.body[3]) is nn.Conv2d
    assert model.stem.eta is None and model.stem.input_grad == "exact"
    with pytest.raises(ValueError, match="not in the model"):
        adderize(PlainNet(), exclude=["nope"])
    # A Linear classifier after the last conv: the last conv is an ordinary layer and is swapped.
    seq = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 3),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    adderize(seq)
    assert type(seq[0]) is nn.Conv2d and isinstance(seq[2], AdderConv2d)


class SharedConvNet(nn.Module):
    """One convolution registered under two names (``shared`` and ``again``)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.again = self.shared
        self.bn2 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.bn2(self.again(self.bn1(self.shared(self.stem(x)))))
        return self.head(x.mean((2, 3)))


def test_adderize_keeps_shared_modules_shared():
    model = adderize(SharedConvNet())
    assert isinstance(model.shared, AdderConv2d) and model.again is model.shared
    assert len(list(model.parameters())) == len(list(SharedConvNet().parameters()))
    assert model(torch.randn(2, 3, 6, 6)).shape == (2, 2)
    kept = adderize(SharedConvNet(), exclude=["again"])
    assert type(kept.shared) is nn.Conv2d and kept.again is kept.shared


class WeightStandardisedConv(nn.Conv2d):
    def forward(self, x):
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / 2
        return self._conv_forward(x, w, self.bias)


def test_adderize_names_conv2d_subclasses_it_leaves_alone():
    def net():
        return nn.Sequential(
            nn.Conv2d(3, 4, 1),
            WeightStandardisedConv(4, 4, 1),
            nn.BatchNorm2d(4),
            nn.Conv2d(4, 4, 1),
            nn.BatchNorm2d(4),
            nn.Flatten(),
            nn.Linear(4, 2),
        )

    with pytest.warns(UserWarning, match=r"nn.Conv2d subclasses left unconverted.*\['1'\]"):
        model = adderize(net())
    assert type(model[1]) is WeightStandardisedConv and isinstance(model[3], AdderConv2d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adderize(net(), exclude=["1"])
    with pytest.raises(TypeError, match="eta must be"):
        adderize(net(), eta="0.2")


# Adaptive learning rate: the same update in every training set-up. The model has no BatchNorm
# (its batch statistics differ between one batch and micro-batches).
class Scale(nn.Module):
    """Brings adder outputs (sums of |x - w| over many taps) into tanh's working range."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        AdderConv2d(6, 8, 3, stride=2, padding=1),
        Scale(1 / 40),
        nn.Tanh(),
        AdderConv2d(8, 8, 1, bias=False, eta=0.1),
        Scale(1 / 10),
        nn.Flatten(),
        nn.Linear(8 * 16, 5),
    )


ADDER_PARAMS = (2, 4)  # indices of the adder weights in model.parameters()


def make_data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g)


def loss_fn(model, x, y):
    return F.cross_entropy(model(x) / 100.0, y)


def make_opt(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


STEPS = 3


def train_official():
    """The official update: raw gradient, then grad *= eta*sqrt(numel)/||grad|| per adder layer
    (as the official autograd function does), then SGD with weight decay and momentum."""
    model = make_model()
    x, y = make_data()
    opt = make_opt(model)
    for m in model.modules():
        if isinstance(m, AdderConv2d):
            m.eta = None  # no hook: rescale by hand below
    etas = {id(model[1].weight): 0.2, id(model[4].weight): 0.1}
    for _ in range(STEPS):
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        with torch.no_grad():
            for p in model.parameters():
                if id(p) in etas:
                    p.grad *= etas[id(p)] * math.sqrt(p.numel()) / p.grad.norm().clamp(min=1e-12)
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def train_plain():
    model = make_model()
    x, y = make_data()
    opt = make_opt(model)
    for _ in range(STEPS):
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def train_micro_batches(chunks=4):
    model = make_model()
    x, y = make_data()
    opt = make_opt(model)
    for _ in range(STEPS):
        opt.zero_grad()
        for xc, yc in zip(x.chunk(chunks), y.chunk(chunks)):
            (loss_fn(model, xc, yc) / chunks).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def train_grad_scaler():
    model = make_model()
    x, y = make_data()
    opt = make_opt(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for _ in range(STEPS):
        opt.zero_grad()
        scaler.scale(loss_fn(model, x, y)).backward()
        scaler.step(opt)
        scaler.update()
    return [p.detach().clone() for p in model.parameters()]


def assert_same_params(a, b):
    initial = list(make_model().parameters())
    for i in ADDER_PARAMS:  # the comparison means something only if the adder weights moved
        assert (a[i] - initial[i]).abs().max() > 1e-3, f"adder weight {i} did not move"
    for i, (p, q) in enumerate(zip(a, b)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5, msg=lambda m: f"parameter {i}: {m}")


def test_adaptive_lr_matches_official_update_single_batch():
    official = train_official()
    plain = train_plain()
    assert_same_params(plain, official)
    # Without the rescaling the update differs.
    model = make_model()
    model[1].eta = model[4].eta = None
    x, y = make_data()
    opt = make_opt(model)
    for _ in range(STEPS):
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        opt.step()
    assert not torch.allclose(model[1].weight, plain[2], atol=1e-3)


def test_adaptive_lr_under_gradient_accumulation():
    assert_same_params(train_micro_batches(), train_official())


def test_adaptive_lr_under_grad_scaler():
    assert_same_params(train_grad_scaler(), train_official())


def test_grad_scaler_skipped_step_leaves_weights_alone():
    model = make_model()
    opt = make_opt(model)
    scaler = torch.amp.GradScaler("cpu")
    before = [p.detach().clone() for p in model.parameters()]
    x, y = make_data()
    scaler.scale(loss_fn(model, x, y)).backward()
    model[1].weight.grad[0, 0, 0, 0] = float("inf")
    scaler.step(opt)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))


def test_step_pre_hook_rescales_once_and_is_idempotent():
    """Through the global optimizer step pre-hook: a step with lr 0 leaves the parameters alone,
    so what it does to the gradients is the hook's rescaling; a second step changes nothing."""
    model = make_model()
    x, y = make_data()
    loss_fn(model, x, y).backward()
    raw = [p.grad.clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    opt.step()
    once = [p.grad.clone() for p in model.parameters()]
    for i, (p, g, r) in enumerate(zip(model.parameters(), once, raw)):
        if i in ADDER_PARAMS:
            eta = 0.2 if i == ADDER_PARAMS[0] else 0.1
            assert g.norm().item() == pytest.approx(eta * math.sqrt(p.numel()), rel=1e-5)
            torch.testing.assert_close(g / g.norm(), r / r.norm())  # a rescaling, nothing else
        else:
            assert torch.equal(g, r), f"untagged parameter {i} was rescaled"
    opt.step()
    for g, again in zip(once, (p.grad for p in model.parameters())):
        torch.testing.assert_close(again, g, rtol=1e-6, atol=0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    """Runs _ddp_train and leaves the process with os._exit: gloo's threads can abort the
    interpreter's normal teardown ("terminate called without an active exception", SIGABRT)
    after the work is done, which would read as a failed worker."""
    import sys
    import traceback

    code = 0
    try:
        _ddp_train(rank, world, port, out)
    except BaseException:  # noqa: BLE001  (reported through the exit code and the traceback)
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _ddp_train(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import datetime

    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    try:
        model = torch.nn.parallel.DistributedDataParallel(make_model())
        x, y = make_data()
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        opt = make_opt(model)
        for _ in range(STEPS):
            opt.zero_grad()
            loss_fn(model, xs, ys).backward()
            opt.step()
        if rank == 0:
            torch.save([p.detach().clone() for p in model.module.parameters()], out)
        dist.barrier()  # no rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


def test_adaptive_lr_under_ddp_two_processes(tmp_path):
    out = str(tmp_path / "params.pt")
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
            pytest.fail("DDP worker did not finish in 120 s")
        assert p.exitcode == 0, f"DDP worker exited with {p.exitcode}"
    assert_same_params(torch.load(out, weights_only=True), train_official())


def test_pytorch_conv2d_moduleinfo_inputs_run_as_adder_conv2d():
    """nn.Conv2d's ModuleInfo inputs (unbatched ones and padding='same' included) through
    AdderConv2d: shapes as nn.Conv2d's, values as the reference on the padded input."""
    common = pytest.importorskip(
        "torch.testing._internal.common_modules",
        reason="torch.testing._internal needs expecttest (requirements.txt)",
    )
    (info,) = [m for m in common.module_db if m.module_cls is nn.Conv2d]
    inputs = info.module_inputs_func(
        info, device="cpu", dtype=torch.float64, requires_grad=False, training=True
    )
    unbatched = 0
    for module_input in inputs:
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        conv = nn.Conv2d(*args, **kwargs, dtype=torch.float64)
        adder = AdderConv2d(*args, **kwargs, dtype=torch.float64)
        (x,) = module_input.forward_input.args
        y = adder(x)
        assert y.shape == conv(x).shape
        batched = x if x.dim() == 4 else x.unsqueeze(0)
        xp = F.pad(batched, conv._reversed_padding_repeated_twice)
        want = reference.adder2d(xp, adder.weight, adder.bias, adder.stride, 0, adder.dilation)
        torch.testing.assert_close(y, want if x.dim() == 4 else want.squeeze(0))
        unbatched += x.dim() == 3
    assert len(inputs) >= 4 and unbatched >= 2
