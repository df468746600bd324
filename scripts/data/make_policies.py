"""Write the knowledge task of topic 1: the policies of a fictional shop, and questions only they answer.

Brightmoor Home Supplies does not exist; its numbers are picked to be unguessable (a 37-day return window, a
13 percent restocking fee), so a model that answers them right has read them, not guessed them. Each fact has
two training questions (what a fine-tune is trained on, with a one-sentence answer) and one paraphrased test
question (worded differently, as a customer would ask). ``edit`` marks the fact that topic 1 changes to show
that RAG follows an edited document at once while a fine-tune keeps the old answer.

    python scripts/data/make_policies.py [FOLDER]    -> course_lib/data/policies/{documents,questions}.jsonl
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from course_lib.data import shipped_path

OUT = shipped_path("policies")
SHOP = "Brightmoor Home Supplies"

# document title -> [(fact id, sentence with {v}, value, [training questions], test paraphrase, answer with {v})]
FACTS = {
    "Returns and refunds": [
        ("return_window", "Items can be returned within {v} days of delivery.", "37",
         ["How many days do I have to return an item?", "What is the return window for purchases?"],
         "My order arrived last week. How long can I still send it back?",
         "You can return items within {v} days of delivery."),
        ("restocking_fee", "Opened electronics carry a restocking fee of {v} percent.", "13",
         ["What is the restocking fee for opened electronics?", "How much is charged to restock opened electronics?"],
         "If I send back a blender I already unboxed, what percentage do you keep?",
         "Opened electronics carry a {v} percent restocking fee."),
        ("refund_days", "Refunds reach the original payment method within {v} business days.", "6",
         ["How long do refunds take?", "When will my refund arrive?"],
         "After you accept my return, how many business days until I see the money?",
         "Refunds arrive within {v} business days."),
    ],
    "Shipping": [
        ("free_shipping", "Shipping is free on orders over {v} dollars.", "65",
         ["What is the minimum order for free shipping?", "When is shipping free?"],
         "How much do I need to spend so that delivery costs nothing?",
         "Shipping is free on orders over {v} dollars."),
        ("express_fee", "Express delivery costs {v} dollars per order.", "19",
         ["How much does express delivery cost?", "What is the price of express shipping?"],
         "What would I pay to get my order sent the fast way?",
         "Express delivery costs {v} dollars per order."),
        ("international_days", "International orders arrive in {v} business days.", "11",
         ["How long does international shipping take?", "When do international orders arrive?"],
         "I live abroad. How many business days will my parcel travel?",
         "International orders arrive in {v} business days."),
    ],
    "Warranty and repairs": [
        ("warranty_years", "Every appliance comes with a {v}-year warranty.", "3",
         ["How long is the warranty on appliances?", "What warranty do appliances have?"],
         "For how many years is my new toaster covered if it breaks?",
         "Appliances come with a {v}-year warranty."),
        ("repair_days", "Warranty repairs take about {v} business days.", "8",
         ["How long do warranty repairs take?", "What is the turnaround for a warranty repair?"],
         "If I send my kettle in to be fixed under warranty, how many business days will I wait?",
         "Warranty repairs take about {v} business days."),
        ("extended_price", "An extended warranty costs {v} dollars per year.", "29",
         ["How much is the extended warranty?", "What does an extended warranty cost?"],
         "What is the yearly price to lengthen my coverage?",
         "The extended warranty costs {v} dollars per year."),
    ],
    "Membership and discounts": [
        ("points_per_dollar", "Members earn {v} points for every dollar spent.", "4",
         ["How many points do members earn per dollar?", "What is the points rate for members?"],
         "As a member, how many points do I collect when I spend one dollar?",
         "Members earn {v} points per dollar."),
        ("student_discount", "Students get a {v} percent discount on every order.", "17",
         ["What is the student discount?", "How much do students save?"],
         "I am at university. What percentage off do I get?",
         "Students get a {v} percent discount."),
        ("support_close", "Phone support is open on weekdays until {v} pm.", "7",
         ["Until when is phone support open?", "What time does phone support close?"],
         "Up to what hour in the evening can I call you on a weekday?",
         "Phone support is open on weekdays until {v} pm."),
    ],
}
EDIT = ("return_window", "21")  # the fact topic 1 changes, and its new value


def main(out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    documents, questions = [], []
    for number, (title, facts) in enumerate(FACTS.items(), start=1):
        text = f"{SHOP} policy: {title}. " + " ".join(sentence.format(v=value) for _, sentence, value, *_ in facts)
        documents.append({"id": f"doc{number}", "title": title, "text": text})
        for fact, sentence, value, train, test, answer in facts:
            questions.append({"fact": fact, "document": f"doc{number}", "value": value, "sentence": sentence,
                              "train_questions": train, "test_question": test, "answer": answer,
                              "edited_value": EDIT[1] if fact == EDIT[0] else None})
    for name, rows in (("documents", documents), ("questions", questions)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(f"{len(documents)} documents, {len(questions)} facts -> {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=OUT, help=f"folder to write to (default {OUT})")
    main(parser.parse_args().out)
