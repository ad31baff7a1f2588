"""The traced (make_fx + torch.func.vjp) energy+force step against eager autograd, and one real compile.

Correctness risk sits in the tracing (detached saved outputs, BatchNorm statistics, index tables), so every
model × activation × BatchNorm on/off is checked on the traced aten graph in float64 (cheap); inductor
itself runs in one small training test (float32, loss curve + resume).
"""
import copy
import logging
import time

import pytest
import torch
from torch import nn

from conftest import positions
from dcnn.activations import INTEGRATED_ACTIVATIONS, replace_activations
from dcnn.atomistic.graph import molecule_graph
from dcnn.compiled import AutoDecision, EnergyForces
from dcnn.atomistic.family import ATOMISTIC
from dcnn.registry import family_of
from dcnn.models import MODEL_NAMES, build_model, denormalize, energy_and_forces, has_normalization, prepare

# small graphs trace fast; a model added later without an entry here is tested at its `small` preset
TINY = {"schnet": dict(hidden=8, filters=8, interactions=1, gaussians=6),
        "cgcnn": dict(embedding=8, convs=1, fc=8, fc_layers=2, gaussians=6),
        "forcenet": dict(hidden=8, interactions=1, gaussians=4),
        "dimenetpp": dict(hidden=8, blocks=1, int_emb=4, basis_emb=4, out_emb=8, spherical=3, radial=3)}


TRIPLET_MODELS = ("dimenetpp", "gemnet_t")


def _variants(name):
    """(activation, denorm, batch sizes): the original and every integrated activation (the paper's
    placement) with BatchNorm if the model has any, and one denormalized arm; a smaller second batch (an
    epoch's last: its own graph) where the code path differs."""
    # the integrated activations' autograd Functions do not depend on the model: every one is traced in the
    # cheaper models; the triplet models (2-6x the cost) trace the original and one integrated activation
    acts = ["original", *(INTEGRATED_ACTIVATIONS if name not in TRIPLET_MODELS else ("isilu",))]
    out = [(a, False, (4, 3) if a == "original" else (4,)) for a in acts]
    if has_normalization(name, "small"):
        out.append(("irelu", True, (4, 3)))
    return out


def _rel(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max().clamp(min=1e-300))


def _grads(model, e, f, we, wf):
    loss = (we * e).sum() + (wf * f).sum()  # random weights: every output entry matters
    return torch.autograd.grad(loss, [p for p in model.parameters()], allow_unused=True)


# every interatomic potential we ship (the PINN network has no E+F step)
MOLECULE_MODELS = [m for m in MODEL_NAMES if family_of(m) is ATOMISTIC]


@pytest.mark.parametrize("name", MOLECULE_MODELS)
def test_traced_step_equals_eager_every_activation_and_batchnorm(name, ethanol):
    Z = torch.as_tensor(ethanol.numbers)
    gen = torch.Generator().manual_seed(1)
    pos = positions(ethanol, 4) + 0.05 * torch.randn(4, len(Z), 3, generator=gen, dtype=torch.float64)
    for activation, denorm, batches in _variants(name):
        torch.manual_seed(0)
        model = build_model(name, "small", **TINY.get(name, {}))
        if activation != "original":
            replace_activations(model, activation, "paper")
        if denorm:
            denormalize(model)
        model = model.double().train()
        with torch.no_grad():  # off the initialisation (DimeNet++'s zero output layers): every gradient non-zero
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        eager = copy.deepcopy(model)
        traced = EnergyForces(model, backend="trace")
        for b in batches:
            graph = prepare(model, molecule_graph(pos[:b], Z))
            e, f = traced(graph)
            e0, f0 = energy_and_forces(eager, graph, create_graph=True)
            we, wf = torch.randn(e0.shape, generator=gen, dtype=e0.dtype), torch.randn(f0.shape, generator=gen,
                                                                                       dtype=f0.dtype)
            g, g0 = _grads(model, e, f, we, wf), _grads(eager, e0, f0, we, wf)
            label = f"{name} {activation} denorm={denorm} batch {b}"
            assert traced.failed is None, label
            assert torch.isfinite(e0).all() and torch.isfinite(f0).all(), label
            assert _rel(e, e0) < 1e-10 and _rel(f, f0) < 1e-10, label
            scale = max(float(x.abs().max()) for x in g0 if x is not None)
            assert scale > 0, label
            for (pname, _), x, x0 in zip(model.named_parameters(), g, g0):
                assert (x is None) == (x0 is None), f"{label}: {pname}"
                if x0 is not None:  # relative to the largest gradient (BatchNorm'd biases have ~0 gradient)
                    assert float((x - x0).abs().max()) <= 1e-10 * scale, f"{label}: {pname}"
            for (bname, buf), buf0 in zip(model.named_buffers(), eager.buffers()):  # BatchNorm running stats
                torch.testing.assert_close(buf, buf0, rtol=1e-12, atol=1e-14, msg=f"{label}: {bname}")
        assert len(traced.graphs) == len(batches), label  # each batch shape its own graph, once


class _Counter(nn.Module):
    """A user model the tracer cannot take: it bumps a buffer in place during forward."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, graph):
        self.calls.add_(1)
        return torch.zeros(graph.n_structures, dtype=graph.positions.dtype).index_add(
            0, graph.batch, torch.tanh(self.lin(graph.positions)).squeeze(-1))


def test_untraceable_model_falls_back_to_eager_once(caplog, ethanol):
    Z = torch.as_tensor(ethanol.numbers)
    model = _Counter().double()
    ef = EnergyForces(model, backend="trace")
    graph = molecule_graph(positions(ethanol, 3), Z)
    with caplog.at_level(logging.WARNING, logger="dcnn"):
        e, f = ef(graph)
        e2, f2 = ef(graph)
    e0, f0 = energy_and_forces(model, graph, create_graph=True)
    assert ef.failed and torch.equal(e, e0) and torch.equal(f2, f0)
    warnings = [r for r in caplog.records if "training eagerly" in r.getMessage()]
    assert len(warnings) == 1 and ef.failed in warnings[0].getMessage()


def test_batches_of_ever_new_shapes_fall_back_to_eager(caplog, ethanol):
    """Variable-size data: a full batch and a smaller last one are traced; a third shape means every batch
    would be its own graph, so the step goes eager (said once) instead of tracing on every step."""
    Z = torch.as_tensor(ethanol.numbers)
    torch.manual_seed(0)
    model = build_model("schnet", "small", **TINY["schnet"]).double().train()
    ef = EnergyForces(model, backend="trace")
    with caplog.at_level(logging.WARNING, logger="dcnn"):
        for b in (4, 3, 2, 4):
            e, f = ef(molecule_graph(positions(ethanol, b), Z))
            e0, f0 = energy_and_forces(model, molecule_graph(positions(ethanol, b), Z), create_graph=True)
            assert _rel(e, e0) < 1e-10 and _rel(f, f0) < 1e-10
    assert len(ef.graphs) == 2 and "more than 2 batch shapes" in ef.failed
    assert sum("training eagerly" in r.getMessage() for r in caplog.records) == 1


def test_auto_compiles_only_when_the_time_pays_back():
    few = AutoDecision("schnet", total_steps=40, probe=3)
    many = AutoDecision("schnet", total_steps=10**9, probe=3)
    never = AutoDecision("no-such-model", total_steps=10**9, probe=3)
    for _ in range(3):  # probing: eager
        assert not few.decide() and not many.decide() and not never.decide()
    assert few.decide() is False and "≤ compile" in few.reason
    assert many.decide() is True and "> compile" in many.reason
    assert never.decide() is False


def test_auto_measures_the_saving_with_eager_and_compiled_steps_alternating(tmp_path):
    """After compiling, `auto` times compiled and eager steps alternately (the same load for both) and
    records the saving for later trials, as the median over every measurement of the graph.  Steps here
    are real sleeps: 10 ms compiled, 30 ms eager (a saving of 2/3)."""
    from dcnn.compiled import GraphRecords

    records = GraphRecords(tmp_path)
    for run in range(2):
        auto = AutoDecision("schnet", total_steps=10**9, probe=3)
        auto.key = "graph"
        modes = []
        for _ in range(10):
            eager = auto.paired(records)
            modes.append(eager)
            time.sleep(0.03 if eager else 0.01)
        # step 0 compiled the graph; steps 1-6 alternate compiled / eager; then compiled only
        assert modes == [False, False, True, False, True, False, True, False, False, False]
        record = records.get("graph")
        assert len(record["savings"]) == run + 1
        assert 0.4 < record["savings"][-1] < 0.85
        assert record["saving"] == pytest.approx(sorted(record["savings"])[len(record["savings"]) // 2]
                                                 if run == 0 else sum(record["savings"]) / 2)
        assert record["eager_step_s"] > record["compiled_step_s"]


def _compiled_training_follows_eager_and_resumes(base: dict, tmp_path) -> tuple[dict, int]:
    """Two epochs eager and compiled (`compile=on`) from the same start: the compiled run follows eager's loss
    curve (a recompilation inside dynamo raises, so it would fall back), and the run resumed from its epoch-1
    checkpoint with compile on repeats epoch 2 exactly.  Returns the compiled run's `compile_stats()` and
    how many graphs it traced, for the caller's claims."""
    from dcnn.config import TrainConfig
    from dcnn.train import Trainer

    eager = Trainer(TrainConfig(**base, compile="off"))
    compiled = Trainer(TrainConfig(**base, compile="on"))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for epoch in (1, 2):
            m0, m1 = eager.step(), compiled.step()
            for k in ("train_loss", "energy_loss", "force_loss"):
                assert m1[k] == pytest.approx(m0[k], rel=1e-4), k
            if epoch == 1:
                compiled.save(tmp_path / "ckpt.pt")
    stats = compiled.task.compile_stats()
    resumed = Trainer(TrainConfig(**base, compile="on"))
    resumed.load(tmp_path / "ckpt.pt")
    m2 = resumed.step()
    assert resumed.task.compile_stats()["compiled"] == 1
    for k in ("train_loss", "energy_loss", "force_loss", "test_energy_loss", "test_force_loss"):
        assert m2[k] == pytest.approx(m1[k], rel=1e-6), k
    return stats, len(compiled.task.energy_and_forces.graphs)


def test_compiled_training_matches_eager_and_resumes(tmp_path):
    """Real inductor: a short float32 run (2 batches of 20 frames of one molecule: one batch shape) follows
    eager's loss curve and resumes exactly.  Cost: one cold inductor compile (~55 s CPU, mostly g++) the first
    time on a machine, ~8 s once inductor's on-disk cache holds it."""
    stats, graphs = _compiled_training_follows_eager_and_resumes(
        dict(model="schnet", activation="isilu", rescale=True, epochs=2, n_train=40, n_val=20, n_test=20,
             lr=1e-3, sizes=TINY["schnet"]), tmp_path)
    assert stats["compiled"] == 1 and stats["compile_s"] > 0 and "compile_fallback" not in stats
    assert graphs == 1  # one batch shape: one graph


def _periodic_batches(cutoff):
    """Three batches of periodic cells of different atom and edge counts (self-images included)."""
    from ase.build import bulk

    from conftest import atoms_graph, slab_with_adsorbate

    def cell(a, rep, seed):
        atoms = bulk("Cu", "fcc", a=a).repeat(rep)
        atoms.rattle(0.05, seed=seed)
        return atoms

    frames = [[slab_with_adsorbate((2, 2, 2), seed=0), cell(3.6, (1, 1, 1), 1)],
              [cell(3.7, (2, 1, 1), 2), cell(3.5, (1, 1, 1), 3), slab_with_adsorbate((2, 2, 2), seed=4)],
              [cell(3.6, (1, 2, 1), 5), slab_with_adsorbate((2, 2, 3), seed=6)]]
    return [atoms_graph(f, cutoff) for f in frames]


@pytest.mark.parametrize("name", MOLECULE_MODELS)
def test_variable_size_batches_one_symbolic_trace_equals_eager(name):
    """Periodic batches of different atom, edge and structure counts: traced once with symbolic sizes, every
    batch's E, F and parameter gradients equal eager's (float64), BatchNorm statistics folded as eager's."""
    torch.manual_seed(0)
    model = build_model(name, "small", **TINY.get(name, {})).double().train()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    eager = copy.deepcopy(model)
    traced = EnergyForces(model, backend="trace", dynamic=True)
    batches = _periodic_batches(model.cutoff)
    assert len({g.positions.shape[0] for g in batches}) == len({g.n_edges for g in batches}) == 3
    assert len({g.n_structures for g in batches}) == 2
    for graph in batches:
        graph = prepare(model, graph)
        e, f = traced(graph)
        e0, f0 = energy_and_forces(eager, graph, create_graph=True)
        assert traced.failed is None
        assert _rel(e, e0) < 1e-10 and _rel(f, f0) < 1e-10
        we, wf = torch.randn(e0.shape, generator=gen, dtype=e0.dtype), torch.randn(f0.shape, generator=gen,
                                                                                  dtype=f0.dtype)
        grads, grads0 = _grads(model, e, f, we, wf), _grads(eager, e0, f0, we, wf)
        scale = max(float(x.abs().max()) for x in grads0 if x is not None)
        for (pname, _), g, g0 in zip(model.named_parameters(), grads, grads0):
            assert (g is None) == (g0 is None), pname
            if g0 is not None:  # relative to the largest gradient (BatchNorm'd biases have ~0 gradient)
                assert float((g - g0).abs().max()) <= 1e-10 * scale, pname
    assert len(traced.graphs) == 1 and traced.compiles == 1
    for b, b0 in zip(model.buffers(), eager.buffers()):  # running statistics updated as eager's
        torch.testing.assert_close(b, b0, rtol=1e-10, atol=1e-12)


def test_compiled_training_on_periodic_cells_of_many_sizes(tmp_path):
    """Real inductor with symbolic sizes on the bundled catalysis slabs (13–29 atoms, every batch its own
    shape): one graph for every batch, the loss curve of eager, and resume-exact.  Cost: one cold inductor
    compile (~20 s) the first time on a machine."""
    stats, graphs = _compiled_training_follows_eager_and_resumes(
        dict(model="schnet", dataset="catalysis", epochs=2, n_train=12, n_val=4, n_test=4, batch_size=4,
             lr=1e-3, sizes=TINY["schnet"], rescale=True, rescale_factor=1e2), tmp_path)
    assert stats["compiled"] == 1 and "compile_fallback" not in stats  # no dynamo recompilation either
    assert graphs == 1  # batches of every size: one graph


def test_compile_off_and_on_as_yaml_reads_them(tmp_path):
    """`compile: off` in a study file and `--set compile=off` reach TrainConfig as YAML 1.1's False: it means
    "off" (and True "on"), not a type error."""
    import yaml

    from dcnn.config import TrainConfig
    from orchestrator.cli import _keyvalue

    for word, mode in (("off", "off"), ("on", "on"), ("auto", "auto")):
        assert TrainConfig.from_dict({"model": "schnet", "compile": yaml.safe_load(word)}).compile == mode
        assert TrainConfig.from_dict({"model": "schnet", "compile": _keyvalue(f"compile={word}")[1]}).compile == mode
    with pytest.raises(ValueError, match="compile=1 is not a valid str"):
        TrainConfig.from_dict({"model": "schnet", "compile": 1})


def test_a_graphs_record_key_sees_sizes_its_repr_does_not_print(ethanol):
    """DimeNet++ at 5 and 6 Å print the same module tree but trace different graphs: their compile records
    (what `auto` and `--estimate` read as this machine's cold and warm compiles) must not be one."""
    from dcnn.compiled import GraphRecords

    graph = molecule_graph(positions(ethanol, 2), torch.as_tensor(ethanol.numbers))
    five, six = (build_model("dimenetpp", "small", cutoff=c).train() for c in (5.0, 6.0))
    assert repr(five) == repr(six)
    assert GraphRecords.key(five, graph, "inductor") != GraphRecords.key(six, graph, "inductor")
    assert GraphRecords.key(six, graph, "inductor") == GraphRecords.key(
        build_model("dimenetpp", "small", cutoff=6.0).train(), graph, "inductor")
