"""Write examples/support_tickets/{train,validation}.jsonl: synthetic customer-support tickets.

Made up from scratch (no benchmark rows): a fictional shop, "Brightnest", selling smart-home
devices and app subscriptions. Each ticket is an opener, one or two sentences of the problem,
sometimes a context sentence and a closer, with the products, amounts, dates and error codes
drawn at random. Four categories: billing, login, shipping, bug. Some tickets mention another
category's words (a crash on the billing page is a bug; "I can't log in to track my order" is
login), so the words alone do not give the label away.

Deterministic: the same seed writes the same files. Run from anywhere:

    python examples/make_support_tickets.py
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CATEGORIES = ("billing", "login", "shipping", "bug")

PRODUCTS = (
    "Brightnest Hub",
    "smart thermostat",
    "door sensor kit",
    "indoor camera",
    "smart plug 4-pack",
    "video doorbell",
    "water leak sensor",
)
PLANS = ("Plus subscription", "Family plan", "Pro plan", "annual plan", "monthly plan")
DEVICES = ("iPhone", "Android phone", "iPad", "Windows laptop", "MacBook", "Chromebook")
PAGES = ("billing", "order history", "settings", "device list", "invoices", "tracking")
CODES = ("E-102", "E-417", "ERR_SYNC_3", "500", "0x80070005", "NET-09", "AUTH-12")
CARRIERS = ("the courier", "UPS", "DHL", "the postal service", "FedEx")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the 3rd", "the 15th")

PROBLEMS: dict[str, tuple[str, ...]] = {
    "billing": (
        "I was charged twice for my {plan} this month.",
        "My card shows a payment of ${amount} that I don't recognise.",
        "I cancelled the {plan} on {day} but got charged again.",
        "The invoice for order #{order} says ${amount}, but the checkout said less.",
        "I returned the {product} two weeks ago and still have no refund.",
        "My promo code was not applied, so I paid the full ${amount}.",
        "Can you send me an invoice with my company's VAT number on it?",
        "The renewal of my {plan} failed and now it says payment overdue.",
        "Why did the price of the {plan} go up to ${amount} without notice?",
        "I'd like to switch from the monthly plan to the annual plan and get the difference back.",
        "You took ${amount} for a {product} I never ordered.",
        "The refund for order #{order} went to an old card that is closed.",
    ),
    "login": (
        "I can't sign in to my account, it says the password is wrong.",
        "The password reset email never arrives, I checked spam too.",
        "My two-factor codes are always rejected on my {device}.",
        "My account got locked after too many attempts and I can't unlock it.",
        "I got a new {device} and can't receive the verification code anymore.",
        "I changed my email address and now I can't log in with either one.",
        "The app keeps logging me out every few minutes on my {device}.",
        "I can't log in to check my invoices, it just says session expired.",
        "I can't log in to track my order #{order}: the code never comes.",
        "Signing in with Google just brings me back to the sign-in screen.",
        "Someone else may have changed my password, I can't get into my account.",
        "The reset link says it has expired even when I click it right away.",
    ),
    "shipping": (
        "My {product} was supposed to arrive on {day} but it's still not here.",
        "The tracking for order #{order} hasn't changed in five days.",
        "{carrier} says the package was delivered but there is nothing at my door.",
        "The box arrived crushed and the {product} inside is dented.",
        "Can I change the delivery address for order #{order}? I'm moving.",
        "I ordered two items but only the {product} was in the box.",
        "{carrier} is asking me to pay a customs fee of ${amount}, is that right?",
        "The delivery date for my {product} keeps moving back.",
        "My order #{order} was sent to my old address.",
        "I got someone else's parcel instead of my {product}.",
        "Do you ship to Norway? The checkout won't accept my postcode.",
        "The package with my {product} was returned to you by {carrier}, please resend it.",
    ),
    "bug": (
        "The app crashes every time I open the {page} page on my {device}.",
        "My {product} shows error {code} when it tries to sync.",
        "The {page} page is blank, just a white screen.",
        "Exporting my history gives an empty file.",
        "Notifications from the {product} stopped showing up on my {device}.",
        "In dark mode the text on the {page} page is unreadable.",
        "The firmware update for my {product} fails at 80% with error {code}.",
        "Pressing Save in settings does nothing at all.",
        "The schedule I set on the {product} resets itself every night.",
        "The app freezes when I try to add a second {product}.",
        "Charts on the {page} page show the wrong week.",
        "After the last update the {product} shows as offline even though it works.",
    ),
}

CONTEXT = (
    "I've been a customer for {years} years.",
    "This is on my {device}.",
    "I have the {plan}.",
    "I already tried restarting everything.",
    "I contacted you last week about this too.",
    "My order number is #{order}.",
    "I bought the {product} in {month}.",
)
OPENERS = ("", "", "Hi!", "Hello.", "Hi there.", "Good morning.", "Urgent:", "Hey.")
CLOSERS = (
    "",
    "",
    "Thanks.",
    "Please help.",
    "Can someone look into this?",
    "This is really frustrating.",
    "Thanks in advance!",
    "Please get back to me soon.",
)
MONTHS = ("January", "March", "May", "August", "October", "December")


def ticket(category: str, rng: random.Random) -> str:
    """One ticket of `category`: opener, problem, maybe context, maybe a second problem
    sentence of the same category, closer."""
    slots = {
        "plan": rng.choice(PLANS),
        "product": rng.choice(PRODUCTS),
        "device": rng.choice(DEVICES),
        "page": rng.choice(PAGES),
        "code": rng.choice(CODES),
        "carrier": rng.choice(CARRIERS),
        "day": rng.choice(DAYS),
        "month": rng.choice(MONTHS),
        "order": str(rng.randint(10000, 99999)),
        "amount": f"{rng.choice((9, 12, 19, 29, 49, 79, 129, 199))}.{rng.choice(('00', '99'))}",
        "years": str(rng.randint(1, 6)),
    }
    problems = rng.sample(PROBLEMS[category], k=2 if rng.random() < 0.25 else 1)
    parts = [rng.choice(OPENERS), *problems]
    if rng.random() < 0.4:
        parts.insert(rng.randint(1, len(parts)), rng.choice(CONTEXT))
    parts.append(rng.choice(CLOSERS))
    return " ".join(part for part in parts if part).format(**slots)


def make(per_category: int, held_out: float, seed: int) -> dict[str, list[dict[str, str]]]:
    """{"train": ..., "validation": ...}: `per_category` distinct tickets of each category,
    the share `held_out` of each category in validation, both shuffled, with ids."""
    rng = random.Random(seed)
    splits: dict[str, list[dict[str, str]]] = {"train": [], "validation": []}
    seen: set[str] = set()
    for category in CATEGORIES:
        texts: list[str] = []
        while len(texts) < per_category:
            text = ticket(category, rng)
            if text not in seen:
                seen.add(text)
                texts.append(text)
        cut = round(per_category * (1 - held_out))
        splits["train"] += [{"text": t, "label": category} for t in texts[:cut]]
        splits["validation"] += [{"text": t, "label": category} for t in texts[cut:]]
    start = 1
    for split, rows in splits.items():
        rng.shuffle(rows)
        splits[split] = [{"id": f"T{start + i:04d}", **row} for i, row in enumerate(rows)]
        start += len(rows)
    return splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-category", type=int, default=130)
    parser.add_argument("--validation", type=float, default=0.25, help="share held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "support_tickets")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, part in make(args.per_category, args.validation, args.seed).items():
        path = args.out / f"{split}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in part), encoding="utf-8")
        print(f"{path}: {len(part)} tickets")


if __name__ == "__main__":
    main()
