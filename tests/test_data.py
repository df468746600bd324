"""course_lib.data: the shipped data sets, adapters and measurements, and the JSONL reader's errors."""
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from course_lib.data import (MEASUREMENTS, PREFERENCE_SPLITS, TICKET_LABELS, TICKET_SPLITS, DataError,
                             held_out_tickets, load_freeform_tickets, load_measurement, load_policies, load_preferences,
                             load_tickets, near_duplicate_key, read_jsonl, write_jsonl, write_measurement)
from course_lib.splits import leaks

ROOT = Path(__file__).resolve().parents[1]


def test_ticket_splits_are_large_balanced_and_leak_free():
    splits = {name: load_tickets(name) for name in TICKET_SPLITS}
    assert sum(len(rows) for rows in splits.values()) >= 1000
    for rows in splits.values():
        counts = Counter(r["label"] for r in rows)
        assert set(counts) == set(TICKET_LABELS)
        assert max(counts.values()) == min(counts.values())
    keys = {name: {near_duplicate_key(r["text"]) for r in rows} for name, rows in splits.items()}
    assert all(len(keys[n]) == len(splits[n]) for n in TICKET_SPLITS), "near-duplicates inside a split"
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    ids = [r["id"] for rows in splits.values() for r in rows]
    assert len(ids) == len(set(ids))
    texts = {name: [r["text"] for r in rows] for name, rows in splits.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert leaks(texts[a], texts[b]) == [], f"{b} tickets with a near duplicate in {a}"


def test_the_first_split_holds_the_same_tickets_and_leaks():
    # topic 2's case study: the same 1,500 tickets, cut at random per label, leak across the splits
    first = {name: load_tickets(name, first_split=True) for name in TICKET_SPLITS}
    now = {name: load_tickets(name) for name in TICKET_SPLITS}
    assert sorted(r["text"] for rows in first.values() for r in rows) == \
        sorted(r["text"] for rows in now.values() for r in rows)
    assert len(leaks([r["text"] for r in first["train"]], [r["text"] for r in first["test"]])) == 56


@pytest.mark.parametrize("script, folder, splits", [("make_tickets.py", "tickets", TICKET_SPLITS),
                                                     ("make_preferences.py", "preferences", PREFERENCE_SPLITS),
                                                     ("make_policies.py", "policies", ("documents", "questions")),
                                                     ("make_messy_tickets.py", "messy", ("raw", "truth"))])
def test_shipped_files_are_what_the_generator_makes(tmp_path, script, folder, splits):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "data" / script), str(tmp_path)], check=True,
                   capture_output=True, cwd=ROOT)
    for name in splits:
        shipped = ROOT / "course_lib" / "data" / folder / f"{name}.jsonl"
        assert (tmp_path / f"{name}.jsonl").read_bytes() == shipped.read_bytes(), name
        if folder == "tickets":
            shipped = shipped.parent / "first_split" / shipped.name
            assert (tmp_path / "first_split" / shipped.name).read_bytes() == shipped.read_bytes(), name


def test_freeform_tickets_are_balanced_and_unlike_the_templates():
    rows = load_freeform_tickets()
    assert Counter(r["label"] for r in rows) == {label: 12 for label in TICKET_LABELS}
    assert len({r["id"] for r in rows}) == len(rows)
    template_keys = {near_duplicate_key(r["text"]) for split in TICKET_SPLITS for r in load_tickets(split)}
    assert not {near_duplicate_key(r["text"]) for r in rows} & template_keys


def test_write_jsonl_is_what_read_jsonl_reads(tmp_path):
    rows = [{"id": "a", "text": "caf\u00e9 \u2013 ok"}, {"id": "b", "text": "line\nbreak"}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    assert read_jsonl(path, {"id": str, "text": str}) == rows
    assert "caf\u00e9" in path.read_text(encoding="utf-8") and len(path.read_text().splitlines()) == 2


def test_near_duplicate_key():
    assert near_duplicate_key("Order #123 is LATE!") == near_duplicate_key("order #4567 is late")
    assert near_duplicate_key("order is late") != near_duplicate_key("order is lost")


@pytest.mark.parametrize("content, message", [
    ('{"text": "a", "label": "x"}\n{"text": "b"}\n', r"bad.jsonl:2: missing field 'label'"),
    ('{"text": "a", "label": 3}\n', r"bad.jsonl:1: field 'label' should be str, got int"),
    ('{"text": "a", "label": "x"}\n\n{"text": oops}\n', r"bad.jsonl:3: invalid JSON"),
    ('["text", "label"]\n', r"bad.jsonl:1: expected a JSON object, got list"),
])
def test_read_jsonl_names_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_jsonl(path, {"text": str, "label": str})


def test_read_jsonl_rejects_invalid_utf8(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_jsonl(path)


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_tickets("dev")


def _measurement(name: str) -> dict:
    return load_measurement(name, announce=False)


def test_policies_state_every_fact_in_its_document(tmp_path):
    documents, questions = load_policies()
    assert len(documents) == 4 and len(questions) == 12
    assert sum(q["edited_value"] is not None for q in questions) == 1
    assert all(q["test_question"] not in q["train_questions"] for q in questions)
    for name in ("documents", "questions"):
        (tmp_path / f"{name}.jsonl").write_text((ROOT / "course_lib" / "data" / "policies" / f"{name}.jsonl").read_text())
    broken = (tmp_path / "questions.jsonl").read_text().replace('"value": "37"', '"value": "38"', 1)
    (tmp_path / "questions.jsonl").write_text(broken)
    with pytest.raises(DataError, match=r"questions.jsonl:1: fact 'return_window' is not stated in document 'doc1'"):
        load_policies(tmp_path)


def _evaluation():
    return _measurement("evaluation.json")


def test_evaluation_measurements_agree_with_their_own_items():
    from course_lib import metrics, shifts

    measured = _evaluation()
    targets = [r["label"] for r in load_tickets("test")]
    for name in ("base", "fine-tuned"):
        record = measured["classification"][name]
        assert record["accuracy"]["estimate"] == metrics.accuracy(record["predictions"], targets)
    assert set(measured["robustness"]) == {"clean", *shifts.SHIFTS, "free-form (hand-written)"}
    free = measured["robustness"]["free-form (hand-written)"]
    assert free["accuracy"]["estimate"] == metrics.accuracy(free["predictions"], [r["label"] for r in load_freeform_tickets()])
    items = measured["generation"]["items"]
    assert [it["id"] for it in items] == [p["id"] for p in load_preferences("test")]
    for name in ("base", "fine-tuned"):
        rouge = [metrics.rouge_l(it[name], it["reference"])["f1"] for it in items]
        assert measured["generation"]["rouge_l"][name]["estimate"] == pytest.approx(sum(rouge) / len(rouge))
    assert measured["generation"]["rouge_l"]["fine-tuned"]["low"] > measured["generation"]["rouge_l"]["base"]["high"]


@pytest.mark.slow
def test_the_shipped_reply_adapter_generates_as_recorded():
    from course_lib import lora
    from course_lib.align import generate_replies
    from course_lib.data import reply_adapter_path
    from course_lib.models import load_default_model

    measured = _evaluation()
    items = measured["generation"]["items"][:4]
    model, tokenizer = load_default_model(device="cpu")
    lora.load_adapter(model, reply_adapter_path())
    replies = generate_replies(model, tokenizer, [it["prompt"] for it in items],
                               max_new_tokens=measured["generation"]["max_new_tokens"], progress=False)
    # greedy decoding: the same replies, unless another CPU's rounding flips a near tie late in a reply
    assert sum(r == it["fine-tuned"] for r, it in zip(replies, items)) >= 3


def test_overfitting_measurement_is_complete_and_names_its_best_step():
    measured = _measurement("overfitting_tickets.json")
    recipe = measured["recipe"]
    assert len(measured["train_loss"]) == recipe["steps"]
    assert measured["eval_step"] == list(range(recipe["eval_every"], recipe["steps"] + 1, recipe["eval_every"]))
    losses = measured["eval_loss"]
    assert measured["best_step"] == measured["eval_step"][losses.index(min(losses))]
    assert all(0 <= a <= 1 for a in measured["eval_accuracy"])


def test_every_shipped_measurement_names_the_command_that_made_it(capsys):
    folder = ROOT / "course_lib" / "data" / "measurements"
    assert {p.name for p in folder.glob("*.json")} == set(MEASUREMENTS)
    for name, command in MEASUREMENTS.items():
        script, *mode = command.split()
        source = (ROOT / script).read_text()
        assert name in source or (mode and mode[0] in source), (name, command)
    measured = load_measurement("data_quality.json")
    assert measured == json.loads((folder / "data_quality.json").read_text())
    assert "scripts/measure/measure_data_quality.py" in capsys.readouterr().out
    with pytest.raises(DataError, match="unknown measurement"):
        load_measurement("data_quality")


def test_scripts_write_measurements_one_way(tmp_path):
    # write_measurement writes what load_measurement reads, in the shipped files' own format
    shipped = ROOT / "course_lib" / "data" / "measurements" / "notebook_times.json"
    path = write_measurement("notebook_times.json", json.loads(shipped.read_text()), folder=tmp_path)
    assert path.read_bytes() == shipped.read_bytes() and path.stat().st_mode & 0o777 == 0o644
    with pytest.raises(DataError, match="unknown measurement"):
        write_measurement("my_results.json", {}, folder=tmp_path)
    for script in sorted({command.split()[0] for command in MEASUREMENTS.values()}):
        source = (ROOT / script).read_text()
        assert "write_measurement(" in source and '"measurements"' not in source, script


def _check_seed_runs(summaries: dict, keys: tuple[str, ...]) -> None:
    """Each comparison the course draws a conclusion from ran with at least 3 seeds, and its summary is theirs."""
    runs = summaries["runs"]
    assert len({r["seed"] for r in runs}) == len(runs) >= 3
    for key in keys:
        values = [r[key] for r in runs]
        assert summaries[key]["n"] == len(runs) and summaries[key]["min"] == min(values)
        assert summaries[key]["mean"] == pytest.approx(sum(values) / len(values))


def test_dpo_ablation_measurement_covers_the_three_recipes_alike_over_seeds():
    measured = _measurement("dpo_ablation.json")
    steps, beta = measured["settings"]["steps"], measured["settings"]["beta"]
    for name in ("SFT on chosen", "DPO", "DPO + NLL"):
        _check_seed_runs(measured[name], ("style", "reward_accuracy", "reward_margin", "reply_perplexity"))
        assert [r["seed"] for r in measured[name]["runs"]] == measured["settings"]["seeds"]
        for run in measured[name]["runs"]:
            assert len(run["loss"]) == steps and 0 <= run["style"] <= 1 and 0 <= run["reward_accuracy"] <= 1
            # the margin is beta times the difference of the log-likelihood changes
            assert run["reward_margin"] == pytest.approx(
                beta * (run["chosen_logprob_change"] - run["rejected_logprob_change"]), rel=1e-4)


def test_data_quality_runs_separate_quantity_noise_and_leakage_over_seeds():
    measured = _measurement("data_quality.json")
    results = measured["results"]
    for name, result in results.items():
        _check_seed_runs(result, ("test_accuracy", "validation_accuracy"))
        # only the leaky set holds near copies of test tickets; nothing holds one of a validation ticket
        near = [r["test_items_with_a_near_duplicate_in_train"] for r in result["runs"]]
        assert all(n >= measured["noise"]["leaked"] for n in near) if name == "leaky 500" else near == [0] * len(near)
    assert [r["examples"] for r in results["clean 500"]["runs"]] == [500] * len(measured["seeds"])
    assert {r["examples"] for name in ("clean 5000", "noisy 5000") for r in results[name]["runs"]} == {5000}
    for name, comparison in measured["comparisons"].items():
        b, a = name.split(" vs ")
        assert [p["difference"] for p in comparison["per_seed"]] == pytest.approx(
            [rb["test_accuracy"] - ra["test_accuracy"] for ra, rb in zip(results[a]["runs"], results[b]["runs"])])


def test_data_quality_at_equal_epochs_sees_each_training_set_once():
    """The equal-epochs run is one seed (the notebook says so); each set is seen once, in whole batches of 8."""
    measured = _measurement("data_quality_epochs.json")
    batch = measured["recipe"]["batch_size"]
    for name, result in measured["results"].items():
        for run in result["runs"]:
            assert run["steps"] == math.ceil(run["examples"] / batch), name
            assert run["test_items_with_a_near_duplicate_in_train"] == 0
    for name, comparison in measured["comparisons"].items():
        b, a = name.split(" vs ")
        assert [p["difference"] for p in comparison["per_seed"]] == pytest.approx(
            [rb["test_accuracy"] - ra["test_accuracy"]
             for ra, rb in zip(measured["results"][a]["runs"], measured["results"][b]["runs"])])


def test_qlora_targets_compare_the_same_adapters_on_both_bases_over_seeds():
    measured = _measurement("qlora_targets.json")
    results = measured["results"]
    assert set(results) == {"fp32 q+v", "fp32 all linear", "nf4 q+v", "nf4 all linear"}
    for name, result in results.items():
        _check_seed_runs(result, ("test_accuracy",))
    trainable = {name: {r["trainable"] for r in result["runs"]} for name, result in results.items()}
    assert trainable["fp32 q+v"] == trainable["nf4 q+v"] == {460_800}  # r=8 on q/v, as topic 3 counts
    assert trainable["fp32 all linear"] == trainable["nf4 all linear"] and min(trainable["nf4 all linear"]) > 460_800


def test_lora_sweep_changes_one_setting_at_a_time_around_the_recipe_over_seeds():
    measured = _measurement("lora_sweep.json")
    base, seeds = measured["base"], measured["seeds"]
    keys = {"rank": ("r", "alpha"), "lr": ("lr",), "alpha": ("alpha",)}
    for sweep, entries in measured["sweeps"].items():
        recipes = [e for e in entries if all(e[k] == base[k] for k in base)]
        assert len(recipes) == 1, f"{sweep} lacks the recipe itself"
        for e in entries:
            assert {k for k in base if e[k] != base[k]} <= set(keys[sweep]), (sweep, e)
            spread = {"runs": e["runs"], "validation_accuracy": e["validation_accuracy_spread"]}
            _check_seed_runs(spread, ("validation_accuracy",))
            assert [r["seed"] for r in e["runs"]] == seeds
            assert e["validation_accuracy"] == spread["validation_accuracy"]["mean"]
            assert all(0 <= r["validation_accuracy"] <= 1 and r["train_seconds"] > 0 for r in e["runs"])
            if e is not recipes[0]:  # paired with the recipe's run of the same seed
                differences = [p["difference"] for p in e["vs_recipe"]["per_seed"]]
                assert differences == pytest.approx([a["validation_accuracy"] - b["validation_accuracy"]
                                                     for a, b in zip(e["runs"], recipes[0]["runs"])])
    assert [e["r"] for e in measured["sweeps"]["rank"]] == [1, 4, 8, 16, 64]


def test_held_out_tickets_spread_over_the_validation_split():
    validation = load_tickets("validation")
    assert held_out_tickets(90) == validation[::2][:90]  # the LoRA sweep's and the overfitting run's 90
    assert held_out_tickets(45) == validation[::5]
    assert {r["label"] for r in held_out_tickets(90)} == set(TICKET_LABELS)
    with pytest.raises(ValueError, match="between 1 and 225"):
        held_out_tickets(0)
