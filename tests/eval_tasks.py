"""Tiny team-written benchmark items in every layout `toolkit eval --data-dir` reads.

`write_tasks(root)` writes a data folder for the zero-shot preset, each task in a different layout
(the original releases' files where they differ from the Hugging Face export); `write_alternates`
writes the other layouts of the same items (save_to_disk, Parquet, JSON Lines exports with the
dataset's field names, MMLU CSVs with a header row and index answers)."""

from __future__ import annotations

import json
from pathlib import Path

ARC = [  # (question, choices, answer index)
    ("Which gas do plants take in from the air to make food?", ["oxygen", "carbon dioxide", "nitrogen", "helium"], 1),
    ("What is the boiling point of water at sea level in degrees Celsius?", ["50", "100", "150", "200"], 1),
    ("Which organ pumps blood through the body?", ["lungs", "liver", "heart", "skin"], 2),
    ("What force pulls objects toward the Earth?", ["gravity", "magnetism", "friction"], 0),
    ("Which of these is a mammal?", ["shark", "whale", "trout", "octopus"], 1),
    ("What do bees collect from flowers?", ["nectar", "sand", "salt", "oil"], 0),
]
HELLASWAG = [  # (activity, ctx_a, ctx_b, endings, label)
    ("Baking cookies", "A woman mixes flour and sugar in a bowl.", "she", ["pours the dough onto a tray and puts it in the oven.",
     "drives a car down the highway.", "swims across the lake.", "climbs a tall mountain."], 0),
    ("Washing a car", "A man sprays water on a dirty car.", "he", ["reads a book in the library.",
     "scrubs the doors with a soapy sponge.", "plays the piano loudly.", "plants a tree in the yard."], 1),
    ("Playing guitar", "A boy sits on a chair holding a guitar.", "he", ["eats a sandwich.", "goes to sleep.",
     "strums the strings and sings a song.", "paints the wall blue."], 2),
    ("Brushing teeth", "A girl puts toothpaste on her brush.", "she", ["jumps on a trampoline.", "bakes a cake.",
     "feeds the cat.", "brushes her teeth in front of the mirror."], 3),
]
PIQA = [  # (goal, sol1, sol2, label)
    ("To dry wet hair quickly,", "use a hair dryer on it.", "put it in the freezer.", 0),
    ("To cut a piece of paper in half,", "tear it with your teeth.", "use a pair of scissors.", 1),
    ("To keep milk fresh,", "store it in the refrigerator.", "leave it in the sun.", 0),
    ("To light a dark room,", "close the curtains.", "turn on a lamp.", 1),
]
WINOGRANDE = [  # (sentence, option1, option2, answer)
    ("The trophy doesn't fit into the suitcase because the _ is too large.", "trophy", "suitcase", "1"),
    ("The trophy doesn't fit into the suitcase because the _ is too small.", "trophy", "suitcase", "2"),
    ("Sarah lent money to Maria because _ was short of cash.", "Sarah", "Maria", "2"),
    ("The cup fell on the rug and did not break because the _ was soft.", "cup", "rug", "2"),
]
OPENBOOKQA = [  # (stem, choices, answer index)
    ("The sun is responsible for", ["puppies learning new tricks", "plants sprouting, blooming and wilting", "children growing up", "flowers wilting in a vase"], 1),
    ("When food is reduced in the stomach", ["the mind needs time to digest", "nutrients are being deconstructed",
                                             "take a second to digest", "digestion is complete"], 1),
    ("A magnet will stick to", ["a wooden table", "a glass window", "an iron nail", "a plastic cup"], 2),
    ("Water freezes when it is", ["heated", "boiled", "cold enough", "stirred"], 2),
]
MMLU = {  # subject -> [(question, choices, answer index)]
    "abstract_algebra": [("Find the order of the group Z_4.", ["1", "2", "4", "8"], 2),
                         ("Is the set of integers under addition a group?", ["Yes", "No", "Only for positive", "Only for zero"], 0),
                         ("How many elements does Z_2 x Z_2 have?", ["2", "3", "4", "6"], 2)],
    "astronomy": [("Which planet is closest to the Sun?", ["Venus", "Mercury", "Earth", "Mars"], 1),
                  ("What is the Sun mainly made of?", ["iron", "rock", "hydrogen", "water"], 2),
                  ("Which planet has prominent rings?", ["Saturn", "Mercury", "Mars", "Venus"], 0)],
}


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def arc_hf(numeric: bool = False) -> list[dict]:
    labels = "1234" if numeric else "ABCD"
    return [{"id": f"arc-{i}", "question": q, "choices": {"text": c, "label": list(labels[:len(c)])}, "answerKey": labels[a]}
            for i, (q, c, a) in enumerate(ARC)]


def hellaswag_rows() -> list[dict]:
    return [{"ind": i, "activity_label": act, "ctx_a": a, "ctx_b": b, "ctx": f"{a} {b}", "endings": e, "split": "val",
             "split_type": "indomain", "source_id": f"s{i}", "label": lab} for i, (act, a, b, e, lab) in enumerate(HELLASWAG)]


def write_tasks(root: Path) -> Path:
    """The zero-shot preset's tasks, in the original releases' layouts (and ARC-Challenge as Parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # ARC-Easy: the official JSONL (question.stem, choices list), numeric answer keys
    official = [{"id": f"arc-{i}", "question": {"stem": q, "choices": [{"text": t, "label": str(k + 1)} for k, t in enumerate(c)]},
                 "answerKey": str(a + 1)} for i, (q, c, a) in enumerate(ARC)]
    _jsonl(root / "ARC-Easy" / "ARC-Easy-Test.jsonl", official)
    # ARC-Challenge: the Hugging Face Parquet export
    (root / "arc_challenge").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(arc_hf()), root / "arc_challenge" / "test-00000-of-00001.parquet")
    _jsonl(root / "hellaswag" / "hellaswag_val.jsonl", hellaswag_rows())
    _jsonl(root / "piqa" / "valid.jsonl", [{"goal": g, "sol1": s1, "sol2": s2} for g, s1, s2, _ in PIQA])
    (root / "piqa" / "valid-labels.lst").write_text("".join(f"{lab}\n" for *_, lab in PIQA))
    _jsonl(root / "winogrande" / "dev.jsonl", [{"qID": f"w{i}", "sentence": s, "option1": o1, "option2": o2}
                                               for i, (s, o1, o2, _) in enumerate(WINOGRANDE)])
    (root / "winogrande" / "dev-labels.lst").write_text("".join(f"{a}\n" for *_, a in WINOGRANDE))
    tsv = ["id\tQuestion Stem\tAnswer A\tAnswer B\tAnswer C\tAnswer D\tAnswer Key"]
    tsv += [f"o{i}\t{q}\t" + "\t".join(c) + f"\t{'ABCD'[a]}" for i, (q, c, a) in enumerate(OPENBOOKQA)]
    (root / "OpenBookQA" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "OpenBookQA" / "Main" / "test.tsv").write_text("\n".join(tsv) + "\n")
    for subject, items in MMLU.items():  # the release's CSVs: no header, answer letter
        for split, rows in (("test", items), ("dev", items[:2])):
            path = root / "mmlu" / "data" / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(_csv_line([q, *c, "ABCD"[a]]) for q, c, a in rows))
    return root


def _csv_line(cells: list[str]) -> str:
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


def write_alternates(root: Path) -> Path:
    """The same items in the other layouts: save_to_disk (ARC-Easy), JSON Lines exports in the
    dataset's fields (OpenBookQA, PIQA, Winogrande, HellaSwag), MMLU CSVs with a header row and index answers."""
    from datasets import Dataset, DatasetDict

    DatasetDict({"test": Dataset.from_list(arc_hf(numeric=True))}).save_to_disk(str(root / "arc_easy" / "saved"))
    _jsonl(root / "openbookqa" / "test.jsonl", [{"id": f"o{i}", "question_stem": q, "choices": {"text": c, "label": list("ABCD")},
                                                 "answerKey": "ABCD"[a]} for i, (q, c, a) in enumerate(OPENBOOKQA)])
    _jsonl(root / "piqa" / "validation.jsonl", [{"goal": g, "sol1": s1, "sol2": s2, "label": lab} for g, s1, s2, lab in PIQA])
    _jsonl(root / "winogrande" / "validation.jsonl", [{"sentence": s, "option1": o1, "option2": o2, "answer": a}
                                                      for s, o1, o2, a in WINOGRANDE])
    _jsonl(root / "hellaswag" / "validation.jsonl", [dict(r, label=str(r["label"])) for r in hellaswag_rows()])
    for subject, items in MMLU.items():
        path = root / "mmlu" / f"{subject}_test.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_csv_line(["question", "A", "B", "C", "D", "answer"]) + "".join(_csv_line([q, *c, str(a)]) for q, c, a in items))
    return root
