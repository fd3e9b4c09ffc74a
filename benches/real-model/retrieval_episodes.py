#!/usr/bin/env python3
"""Training text that asks for retrieval over long spans (docs/results.md, issue 30).

The fine-tuning text of the retrofit (prepare_corpus.py's train.txt, Python documentation) never
asks a layer to carry a fact across hundreds of tokens, so nothing in its distillation loss
teaches a layer that reads a neighbour's keys/values to retrieve. This script interleaves that
text with *retrieval episodes*: a fact planted between two paragraphs ("Note: the access code
of the Alder Bay account is 58231.") and asked for 400 to 1,600 characters later ("Question:
what is the access code of the Alder Bay account? Answer: 58231."). The answer's digits are
predictable only by attending back to the planted sentence.

The episodes are deliberately unlike the passkey evaluation (`kv-routing eval --passkey`: a
"pass key" in repeated lines about grass and sky), so that passkey accuracy measures a transfer
of retrieval, not a memorised template.

Usage: retrieval_episodes.py TRAIN_TXT OUT_TXT [--every CHARS] [--seed N]
"""
import argparse
import pathlib
import random

FIRST = ["Alder", "Birch", "Cedar", "Delta", "Ember", "Falcon", "Granite", "Harbor", "Iris",
         "Juniper", "Kestrel", "Linden", "Maple", "Nimbus", "Onyx", "Pebble", "Quartz", "Raven",
         "Sierra", "Tundra", "Umber", "Violet", "Willow", "Yarrow", "Zephyr"]
SECOND = ["Bay", "Creek", "Field", "Gate", "Hill", "Lake", "Mill", "Point", "Ridge", "Vale"]
WHAT = ["access code", "account number", "room number", "order number", "badge number"]


def episode(rng: random.Random) -> tuple[str, str]:
    name = f"{rng.choice(FIRST)} {rng.choice(SECOND)}"
    what = rng.choice(WHAT)
    value = str(rng.randrange(10_000, 100_000))
    plant = f"Note: the {what} of the {name} account is {value}.\n\n"
    ask = (f"Question: what is the {what} of the {name} account? "
           f"Answer: {value}.\n\n")
    return plant, ask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train")
    parser.add_argument("out")
    parser.add_argument("--every", type=int, default=1200,
                        help="mean characters between planted facts")
    parser.add_argument("--min-gap", type=int, default=400)
    parser.add_argument("--max-gap", type=int, default=1600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    paragraphs = pathlib.Path(args.train).read_text("utf-8").split("\n\n")
    out: list[str] = []
    pending: list[tuple[int, str]] = []  # (position in characters, question)
    position = 0
    next_plant = rng.randint(0, 2 * args.every)
    episodes = 0
    for paragraph in paragraphs:
        text = paragraph.strip("\n") + "\n\n"
        out.append(text)
        position += len(text)
        due = [ask for at, ask in pending if at <= position]
        pending = [(at, ask) for at, ask in pending if at > position]
        for ask in due:
            out.append(ask)
            position += len(ask)
        if position >= next_plant:
            plant, ask = episode(rng)
            out.append(plant)
            position += len(plant)
            pending.append((position + rng.randint(args.min_gap, args.max_gap), ask))
            next_plant = position + rng.randint(args.every // 2, 3 * args.every // 2)
            episodes += 1
    pathlib.Path(args.out).write_text("".join(out), "utf-8")
    print(f"{args.out}: {episodes} episodes, {position} characters")


if __name__ == "__main__":
    main()
