"""course_lib.cleaning: each stage removes or changes what it says, and the report adds up."""
import json

from course_lib.classify import SYSTEM_PROMPT
from course_lib.cleaning import clean, report, strip_markup
from course_lib.data import TICKET_LABELS, messy_tickets_path

LABELS = ("payment", "delivery")


def test_each_stage_on_hand_made_lines(tiny):
    _, tokenizer = tiny
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Card declined again"},
                         {"role": "assistant", "content": "payment"}]}
    bad_chat = {"messages": [{"role": "assistant", "content": "payment"}, {"role": "user", "content": "x"}]}
    lines = [json.dumps({"text": "<p>Parcel &amp; box   lost</p>", "label": "delivery"}),
             "not json",
             json.dumps({"ticket": "Refund please, mail me at a.b@example.com", "category": "Payment"}),
             json.dumps(chat), json.dumps(bad_chat),
             json.dumps({"text": "Where is it?", "label": "deliv"}),
             json.dumps({"body": "x"}),
             json.dumps({"text": "parcel & box lost!", "label": "delivery"}),       # exact duplicate once cleaned
             json.dumps({"text": " ".join(["word"] * 200), "label": "payment"})]
    rows, stages = clean(lines, LABELS, "f.jsonl", tokenizer=tokenizer, max_tokens=64, system=SYSTEM_PROMPT)
    assert [(r["text"], r["label"], r["line"]) for r in rows] == [
        ("Parcel & box lost", "delivery", 1), ("Refund please, mail me at [EMAIL]", "payment", 3),
        ("Card declined again", "payment", 4)]
    by = {s.name: s for s in stages}
    assert by["parse"].dropped == {"not JSON": 1} and by["parse"].examples == ["f.jsonl:2: not JSON"]
    assert by["fields"].dropped == {"chat with a problem": 1, "unknown fields": 1}
    assert by["markup"].changed == {"markup or whitespace": 1} and by["pii"].changed == {"email": 1}
    assert by["labels"].dropped == {"unknown label": 1} and by["exact duplicates"].dropped == {"exact duplicate": 1}
    assert by["length"].dropped == {"over 64 tokens": 1}
    for before, after in zip(stages, stages[1:]):
        assert before.records_out == after.records_in
        assert before.records_in - sum(before.dropped.values()) == before.records_out
    assert "-1 not JSON" in report(stages)


def test_strip_markup():
    assert strip_markup("<div>a &lt;b&gt;<br/>\n\tc</div>") == "a <b> c"


def test_the_shipped_messy_set_comes_out_clean():
    from course_lib.dedup import near_duplicate_pairs, normalise

    lines = messy_tickets_path().read_text(encoding="utf-8").splitlines()
    truth = [json.loads(t) for t in (messy_tickets_path().parent / "truth.jsonl").read_text().splitlines()]
    assert len(lines) == len(truth) == 3000
    rows, stages = clean(lines, TICKET_LABELS, "raw.jsonl")
    assert stages[0].dropped["not JSON"] == sum("not_json" in t["damage"] for t in truth)
    texts = [r["text"] for r in rows]
    assert len({normalise(t) for t in texts}) == len(texts) and near_duplicate_pairs(texts, 0.8) == []
    assert not any("@" in t or "<" in t for t in texts) and all(r["label"] in TICKET_LABELS for r in rows)
    kept_damage = [d for r in rows for d in truth[r["line"] - 1]["damage"]]
    assert not {"empty_label", "truncated_label", "turn_order", "not_json"} & set(kept_damage)
