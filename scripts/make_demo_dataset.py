"""Write a synthetic support-ticket data set with 3 classes (billing, bug, feature) as train.csv, validation.csv and
test.csv (columns text, label), from sentence templates and a seeded random generator: the same seed writes the same
files. Tickets about one product area share its words across classes (an invoice page that crashes is a bug, not
billing), a small share of labels is flipped, as in hand-labelled data, and 2 of each class's 10 phrasings appear only
in validation and test, so the figures say how a model does on wordings it was not trained on.

    python scripts/make_demo_dataset.py OUT [--seed 0] [--train 1200] [--validation 300] [--test 300] [--noise 0.03]
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

AREAS = [
    "invoice",
    "checkout",
    "dashboard",
    "login page",
    "mobile app",
    "export",
    "search",
    "calendar",
    "report",
    "subscription",
    "profile",
    "notification",
]
TEMPLATES = {
    "billing": [
        "I was charged twice for my {area} this month",
        "Why does my invoice show a fee I did not agree to?",
        "Please refund the last payment, I cancelled before the renewal",
        "My card was declined but the money left my account",
        "Can I get a receipt for the {area} upgrade with our VAT number on it?",
        "The price on my bill is higher than the plan I signed up for",
        "How do I change the credit card used for the {area} plan?",
        "We were billed for {n} seats but only use {m}",
        "I need an invoice for March, the {area} page only shows February",
        "Cancel my subscription and stop charging me",
    ],
    "bug": [
        "The {area} crashes every time I open it",
        "I get an error {code} when I save changes in the {area}",
        "The {area} button does nothing on {browser}",
        "Since the last update the {area} shows a blank screen",
        "Totals in the {area} are wrong after I apply a filter",
        "The {area} freezes for a minute and then logs me out",
        "Uploading a file to the {area} fails with a timeout",
        "Dates in the {area} are off by one day",
        "The invoice download gives a corrupted PDF",
        "Payment page spins forever and never confirms",
    ],
    "feature": [
        "Please add a dark mode to the {area}",
        "It would be great if the {area} could export to Excel",
        "Could you support single sign-on for the {area}?",
        "We would like to schedule reports from the {area} every week",
        "Can you add a way to share the {area} with people outside our team?",
        "I wish the {area} had keyboard shortcuts",
        "Please let us pay invoices by bank transfer as well",
        "Add an option to group items in the {area} by customer",
        "Would love a mobile widget for the {area}",
        "Any plans to offer an API for the {area}?",
    ],
}
OPENERS = ["", "", "", "Hi, ", "Hello team, ", "Urgent: ", "Quick question: ", "Hey, "]
CLOSERS = ["", "", "", " Thanks!", " Thank you.", " Any help appreciated.", " This is blocking us.", " Cheers"]
BROWSERS = ["Firefox", "Safari", "Chrome", "Edge", "Android", "iOS"]
CODES = ["500", "403", "404", "502", "E42", "0x1F"]


HELD_OUT = 2  # the last phrasings of each class: validation and test only


def ticket(rng: random.Random, label: str, held_out: bool) -> str:
    templates = TEMPLATES[label] if held_out else TEMPLATES[label][:-HELD_OUT]
    text = rng.choice(templates).format(
        area=rng.choice(AREAS),
        browser=rng.choice(BROWSERS),
        code=rng.choice(CODES),
        n=rng.randint(10, 50),
        m=rng.randint(2, 9),
    )
    opener, closer = rng.choice(OPENERS), rng.choice(CLOSERS)
    if opener.endswith(", ") or rng.random() < 0.2:
        text = text[0].lower() + text[1:]
    if closer and text[-1] not in ".?!":
        text += "."
    return opener + text + closer


def rows(rng: random.Random, n: int, noise: float, held_out: bool) -> list[tuple[str, str]]:
    """n tickets, classes about as frequent as in a help desk (bugs most, features least); `noise` of them mislabelled;
    `held_out`: with the phrasings kept out of training."""
    labels = sorted(TEMPLATES)
    out = []
    for _ in range(n):
        label = rng.choices(labels, weights=[0.35, 0.45, 0.20])[0]
        text = ticket(rng, label, held_out)
        if rng.random() < noise:
            label = rng.choice([other for other in labels if other != label])
        out.append((text, label))
    return out


def write(path: Path, data: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write train.csv, validation.csv and test.csv into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--validation", type=int, default=300)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--noise", type=float, default=0.03, help="share of labels flipped to another class")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", args.train), ("validation", args.validation), ("test", args.test)):
        write(args.out / f"{split}.csv", rows(rng, n, args.noise, held_out=split != "train"))
    print(
        f"wrote {args.out}/train.csv ({args.train} rows), validation.csv ({args.validation}), "
        f"test.csv ({args.test}); labels: {', '.join(sorted(TEMPLATES))}"
    )


if __name__ == "__main__":
    main()
