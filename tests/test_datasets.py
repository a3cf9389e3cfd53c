"""Tests of the data-set converters (``recbole_genair.data.converters``) and their CLI.

The raw-format tests write small fixtures in the official formats themselves (gzip JSON
lines, Python-dict-literal lines for the Amazon 2014 metadata, Yelp JSON).  The tests on
the real shared files are skipped when ``../shared/data`` is absent; they write into a
temporary directory, never into the project's ``dataset/``.
"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from recbole_genair import datasets as cli
from recbole_genair.data import converters as conv
from recbole_genair.data.converters import DatasetExistsError, DatasetFormatError

SHARED = conv.SHARED_DATA_DIR
needs_shared = pytest.mark.skipif(not SHARED.is_dir(),
                                  reason=f"shared data folder {SHARED} is absent")


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def write_lines(path: Path, lines, gz: bool = None) -> Path:
    text = "".join(line + "\n" for line in lines)
    if gz is None:
        gz = path.name.endswith(".gz")
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def read_table(path: Path):
    """(header columns, rows) of a written atomic file, with a plain split on tabs."""
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "", "file must end with a newline"
    header = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:-1]]
    assert all(len(r) == len(header) for r in rows)
    return header, rows


def sequences(rows):
    """user -> [item, ...] in file order, checking that users' rows are contiguous."""
    out, last = {}, None
    for row in rows:
        user = row[0]
        if user != last:
            assert user not in out, f"rows of user {user} are not contiguous"
            out[user] = []
            last = user
        out[user].append(row[1])
    return out


def assert_nothing_left(out_dir: Path):
    assert not out_dir.exists() or list(out_dir.iterdir()) == [], \
        f"left behind: {list(out_dir.iterdir())}"


def convert(name, raw, out, **kw):
    return conv.convert(name, raw_dir=raw, out_dir=out, progress=False, **kw)


# ----------------------------------------------------------------------------------------
# Amazon 2014 (McAuley) Beauty: raw form
# ----------------------------------------------------------------------------------------
def beauty2014_fixture(raw: Path) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    reviews = [  # (reviewer, asin, time) in file order, deliberately not chronological
        ("U1", "I3", 300), ("U2", "I1", 50), ("U1", "I1", 100), ("U1", "I2", 300),
        ("U2", "I2", 40), ("U1", "I4", 200),
    ]
    write_lines(raw / "reviews_Beauty_5.json.gz", [
        json.dumps({"reviewerID": u, "asin": a, "unixReviewTime": t, "overall": 5.0,
                    "reviewText": "nice"}) for u, a, t in reviews])
    meta = [
        {"asin": "I0", "title": "Not reviewed"},
        {"asin": "I1", "title": "Rose\tLip\nBalm", "price": 3.5, "brand": "Acme",
         "categories": [["Beauty", "Makeup", "Lips"], ["Beauty", "Women's"]],
         "salesRank": {"Beauty": 1234}, "description": "Soft.\nGood."},
        {"asin": "I2", "title": '"Quoted" shampoo', "categories": [["Beauty"]]},
        {"asin": "I3", "title": "Soap", "salesRank": {}, "imUrl": "http://x"},
    ]  # I4 has no metadata at all
    write_lines(raw / "meta_Beauty.json.gz", [repr(m) for m in meta])


def test_amazon2014_raw_order_timestamps_and_fields(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    beauty2014_fixture(raw)
    res = convert("Amazon_Beauty", raw, out)
    assert res["counts"] == {"users": 2, "items": 4, "interactions": 6}
    assert "2014" in res["source"]
    header, rows = read_table(out / "Amazon_Beauty" / "Amazon_Beauty.inter")
    assert header == ["user_id:token", "item_id:token", "timestamp:float"]
    # users in order of first appearance; each by time, ties (U1 I3/I2 at 300) in file order
    assert rows == [["U1", "I1", "100"], ["U1", "I4", "200"], ["U1", "I3", "300"],
                    ["U1", "I2", "300"], ["U2", "I2", "40"], ["U2", "I1", "50"]]

    header, rows = read_table(out / "Amazon_Beauty" / "Amazon_Beauty.item")
    assert header == ["item_id:token", "title:token", "sales_type:token", "sales_rank:float",
                      "categories:token_seq", "price:float", "brand:token",
                      "description:token"]
    items = {r[0]: dict(zip([h.split(":")[0] for h in header], r)) for r in rows}
    assert sorted(items) == ["I1", "I2", "I3", "I4"]  # I0 is not reviewed
    i1 = items["I1"]
    assert i1["title"] == "Rose Lip Balm"  # tab / newline replaced
    assert (i1["sales_type"], i1["sales_rank"], i1["price"], i1["brand"]) == \
        ("Beauty", "1234", "3.5", "Acme")
    assert conv.parse_list_value(i1["categories"]) == ["Beauty", "Makeup", "Lips", "Women's"]
    assert i1["description"] == "Soft. Good."
    assert items["I4"]["title"] == "" and items["I4"]["categories"] == ""
    # a value starting with a double quote is CSV-quoted, so pandas / RecBole read it back
    table = conv.read_atomic(out / "Amazon_Beauty" / "Amazon_Beauty.item")
    titles = {r[0]: r[1] for r in table.rows}
    assert titles["I2"] == '"Quoted" shampoo'
    import pandas as pd
    df = pd.read_csv(out / "Amazon_Beauty" / "Amazon_Beauty.item", sep="\t", dtype=str,
                     engine="python", keep_default_na=False)
    assert dict(zip(df["item_id:token"], df["title:token"]))["I2"] == '"Quoted" shampoo'


def test_amazon2014_malformed_meta_line_names_file_and_line(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    beauty2014_fixture(raw)
    lines = gzip.open(raw / "meta_Beauty.json.gz", "rt").read().splitlines()
    lines[2] = "{'asin': 'I2', 'title': 'broken"  # line 3, a wanted item
    write_lines(raw / "meta_Beauty.json.gz", lines)
    with pytest.raises(DatasetFormatError) as err:
        convert("Amazon_Beauty", raw, out)
    assert f"{raw / 'meta_Beauty.json.gz'}:3:" in str(err.value)
    assert err.value.line == 3
    assert_nothing_left(out)


def test_amazon2014_missing_meta_file(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    beauty2014_fixture(raw)
    (raw / "meta_Beauty.json.gz").unlink()
    with pytest.raises(DatasetFormatError, match="meta_Beauty.json.gz"):
        convert("Amazon_Beauty", raw, out)
    assert_nothing_left(out)


# ----------------------------------------------------------------------------------------
# Amazon 2018 Fashion: raw form and the LLM-ESR filter
# ----------------------------------------------------------------------------------------
# Hand-computed fixture.  Raw counts: users u1-u4 5 each, u5 2, u6 2, u7 5; items A 5,
# B 5, C 5, Y 5, X 4, P 2, Q/R/S 1.  One pass of the 5/5 filter keeps u1-u3 with A B C Y,
# u4 with A B C (exactly 3: kept), u7 with C only (dropped by the >=3 rule); u5/u6 are
# dropped (2 raw).  Y keeps only 3 interactions: the filter is not iterated (an iterated
# 5-core would leave nothing).
FASHION_RAW = [  # (user, item, time) in file order
    ("u1", "Y", 50), ("u1", "A", 10), ("u2", "A", 1), ("u1", "C", 30), ("u1", "B", 30),
    ("u1", "X", 20), ("u2", "B", 2), ("u2", "C", 3), ("u2", "X", 4), ("u2", "Y", 5),
    ("u3", "Y", 9), ("u3", "X", 8), ("u3", "C", 7), ("u3", "B", 6), ("u3", "A", 5),
    ("u4", "A", 1), ("u4", "B", 1), ("u4", "C", 1), ("u4", "X", 1), ("u4", "P", 1),
    ("u5", "A", 1), ("u5", "Y", 2), ("u6", "B", 1), ("u6", "Y", 2),
    ("u7", "C", 1), ("u7", "P", 2), ("u7", "Q", 3), ("u7", "R", 4), ("u7", "S", 5),
]
FASHION_EXPECTED = [
    ["u1", "A", "10"], ["u1", "C", "30"], ["u1", "B", "30"], ["u1", "Y", "50"],
    ["u2", "A", "1"], ["u2", "B", "2"], ["u2", "C", "3"], ["u2", "Y", "5"],
    ["u3", "A", "5"], ["u3", "B", "6"], ["u3", "C", "7"], ["u3", "Y", "9"],
    ["u4", "A", "1"], ["u4", "B", "1"], ["u4", "C", "1"],
]


def fashion2018_fixture(raw: Path) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    write_lines(raw / "AMAZON_FASHION.json.gz", [
        json.dumps({"overall": 4.0, "verified": True, "reviewerID": u, "asin": a,
                    "unixReviewTime": t, "reviewTime": "01 1, 2015"})
        for u, a, t in FASHION_RAW])
    meta = [
        {"asin": "A", "title": "Red Dress", "brand": "Brandy", "price": "$12.99",
         "category": ["Clothing, Shoes & Jewelry", "Women"], "description": ["Soft", "cotton"],
         "main_cat": "AMAZON FASHION"},
        {"asin": "B", "title": "Hat", "price": "$5.00 - $9.99", "category": []},
        {"asin": "X", "title": "Dropped item"},
        {"asin": "C", "title": "Scarf", "price": "<span>", "brand": ""},
        {"asin": "A", "title": "Duplicate record, ignored"},
    ]  # Y has no metadata
    write_lines(raw / "meta_AMAZON_FASHION.json.gz", [json.dumps(m) for m in meta])


def test_a_raw_fashion_build_has_archetype_prompts_and_the_shared_split_says_why_it_has_none(
        tmp_path, capsys):
    import run_recbole_genair
    from recbole_genair.archetypes.pipeline import prompt_spec_for
    from recbole_genair.archetypes.prompt import build_prompt, how_to_make_features, read_item_file

    fashion2018_fixture(tmp_path / "raw")
    convert("Amazon_Fashion", tmp_path / "raw", tmp_path / "out")
    item = tmp_path / "out" / "Amazon_Fashion" / "Amazon_Fashion.item"
    spec = prompt_spec_for("Amazon_Fashion")  # properties/dataset/Amazon_Fashion.yaml
    names, rows = read_item_file(item)
    prompts = {row["item_id"]: build_prompt(row, spec) for row in rows}
    assert "The item name is Red Dress. The item brand is Brandy." in prompts["A"]
    assert "The item brand" not in prompts["C"]  # an empty value is left out
    assert how_to_make_features("Amazon_Fashion", item) == (
        "make them with `python -m recbole_genair.archetypes --dataset=Amazon_Fashion`")

    # the shared LLM-ESR split: ids only. The runner stops with one line saying why and what runs
    item.write_text("item_id:token\n" + "".join(f"{row['item_id']}\n" for row in rows))
    assert "has no item text: its fields are ['item_id']" in how_to_make_features("Amazon_Fashion", item)
    assert run_recbole_genair.main(["--model=SASRec", "--dataset=Amazon_Fashion",
                                    f"--data_path={tmp_path / 'out'}", "--show_progress=False",
                                    f"--checkpoint_dir={tmp_path / 'saved'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "Amazon_Fashion.archetype: archetype features not found" in err[0]
    assert "has no item text" in err[0] and "--raw-dir=DIR --force" in err[0]
    assert "`--method=base` runs without them" in err[0]
    # and a data set whose YAML declares no prompt fields says so
    hint = how_to_make_features("Mine", item)
    assert hint.startswith("none can be made") and "properties/dataset/Mine.yaml declares no `archetype_fields`" in hint


def test_llmesr_filter_single_pass_hand_computed(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    fashion2018_fixture(raw)
    res = convert("Amazon_Fashion", raw, out)
    assert res["counts"] == {"users": 4, "items": 4, "interactions": 15}
    _, rows = read_table(out / "Amazon_Fashion" / "Amazon_Fashion.inter")
    assert rows == FASHION_EXPECTED

    header, rows = read_table(out / "Amazon_Fashion" / "Amazon_Fashion.item")
    names = [h.split(":")[0] for h in header]
    for field in ("item_id", "title", "brand", "category", "price", "description"):
        assert field in names
    items = {r[0]: dict(zip(names, r)) for r in rows}
    assert sorted(items) == ["A", "B", "C", "Y"]
    assert items["A"]["title"] == "Red Dress"
    assert items["A"]["price"] == "12.99"
    assert items["A"]["description"] == "Soft cotton"
    assert conv.parse_list_value(items["A"]["category"]) == ["Clothing, Shoes & Jewelry",
                                                             "Women"]
    assert items["B"]["price"] == "5"
    assert items["C"]["price"] == ""
    assert items["Y"]["title"] == ""


def test_llmesr_filter_function_directly():
    log = conv.InteractionLog()
    for u, i, t in FASHION_RAW:
        log.add(u, i, t)
    got = [[u, i, str(int(t))] for u, i, t in conv.llmesr_filter(log)]
    assert got == FASHION_EXPECTED
    # Looser thresholds keep more, counted on the raw log in one pass: at 2 / 2 / 1 only the
    # items with one raw interaction (Q, R, S) go, so X and P come back, and u5, u6 and u7 too
    loose = conv.llmesr_filter(log, min_user=2, min_item=2, min_seq=1)
    assert Counter(u for u, _, _ in loose) == {"u1": 5, "u2": 5, "u3": 5, "u4": 5, "u5": 2, "u6": 2, "u7": 2}
    assert {i for _, i, _ in loose} == {"A", "B", "C", "X", "Y", "P"}


def test_fashion_malformed_review_line_and_no_leftovers(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    fashion2018_fixture(raw)
    lines = gzip.open(raw / "AMAZON_FASHION.json.gz", "rt").read().splitlines()
    lines[6] = '{"reviewerID": "u2", "asin": '  # line 7
    write_lines(raw / "AMAZON_FASHION.json.gz", lines)
    with pytest.raises(DatasetFormatError) as err:
        convert("Amazon_Fashion", raw, out)
    assert "AMAZON_FASHION.json.gz:7:" in str(err.value)
    assert "malformed JSON" in str(err.value)
    assert_nothing_left(out)


def test_fashion_missing_required_field(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    fashion2018_fixture(raw)
    lines = gzip.open(raw / "AMAZON_FASHION.json.gz", "rt").read().splitlines()
    lines[1] = json.dumps({"reviewerID": "u1", "asin": "A"})  # no unixReviewTime
    write_lines(raw / "AMAZON_FASHION.json.gz", lines)
    with pytest.raises(DatasetFormatError, match=r"AMAZON_FASHION\.json\.gz:2: .*unixReviewTime"):
        convert("Amazon_Fashion", raw, out)
    assert_nothing_left(out)


# ----------------------------------------------------------------------------------------
# Yelp: raw form
# ----------------------------------------------------------------------------------------
def yelp_fixture(raw: Path) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    reviews = []
    # 5 users x 5 businesses, each user's reviews written in reverse time order
    for u in range(5):
        for b in reversed(range(5)):
            reviews.append((f"user{u}", f"biz{b}", f"2015-0{b + 1}-0{u + 1} 10:00:0{u}"))
    reviews.append(("user0", "biz0", "2021-06-01 00:00:00"))  # outside LLM-ESR's window
    reviews.append(("user9", "biz0", "2016-01-01 00:00:00"))  # user with 1 review
    write_lines(raw / "yelp_academic_dataset_review.json", [
        json.dumps({"review_id": f"r{k}", "user_id": u, "business_id": b, "stars": 4.0,
                    "date": d, "text": "ok"}) for k, (u, b, d) in enumerate(reviews)])
    business = [
        {"business_id": f"biz{b}", "name": f"Place {b}", "city": "Tampa", "state": "FL",
         "stars": 4.5, "review_count": 10 + b, "is_open": 1,
         "categories": "Restaurants, Pizza" if b else None,
         "attributes": {"WiFi": "u'free'"} if b == 1 else None}
        for b in range(6)]
    write_lines(raw / "yelp_academic_dataset_business.json", [json.dumps(x) for x in business])


def test_yelp_raw(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    yelp_fixture(raw)
    res = convert("Yelp", raw, out)
    assert res["counts"] == {"users": 5, "items": 5, "interactions": 25}
    _, rows = read_table(out / "Yelp" / "Yelp.inter")
    seqs = sequences(rows)
    assert list(seqs) == [f"user{u}" for u in range(5)]
    assert all(seq == [f"biz{b}" for b in range(5)] for seq in seqs.values())
    first = datetime(2015, 1, 1, 10, 0, 0, tzinfo=timezone.utc).timestamp()
    assert float(rows[0][2]) == first
    times = [float(r[2]) for r in rows[:5]]
    assert times == sorted(times)

    header, rows = read_table(out / "Yelp" / "Yelp.item")
    names = [h.split(":")[0] for h in header]
    for field in ("name", "city", "state", "categories", "stars", "review_count"):
        assert field in names
    items = {r[0]: dict(zip(names, r)) for r in rows}
    assert sorted(items) == [f"biz{b}" for b in range(5)]  # biz5 has no kept review
    assert items["biz1"]["name"] == "Place 1"
    assert items["biz1"]["categories"] == "Restaurants, Pizza"
    assert items["biz0"]["categories"] == ""
    assert json.loads(items["biz1"]["attributes"]) == {"WiFi": "u'free'"}
    assert items["biz3"]["review_count"] == "13"


def test_yelp_bad_date_and_wrong_type(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    yelp_fixture(raw)
    path = raw / "yelp_academic_dataset_review.json"
    lines = path.read_text().splitlines()
    lines[3] = json.dumps({"user_id": "user0", "business_id": "biz1", "date": "yesterday"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=r"review\.json:4: bad date"):
        convert("Yelp", raw, out)
    lines[3] = json.dumps([1, 2])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=r"review\.json:4: expected an object"):
        convert("Yelp", raw, out)
    assert_nothing_left(out)


def test_yelp_missing_business_file(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    yelp_fixture(raw)
    (raw / "yelp_academic_dataset_business.json").unlink()
    with pytest.raises(DatasetFormatError, match="yelp_academic_dataset_business.json"):
        convert("Yelp", raw, out)
    assert_nothing_left(out)


# ----------------------------------------------------------------------------------------
# Shared forms on small fixtures: errors
# ----------------------------------------------------------------------------------------
def test_llmesr_inter_wrong_column_count(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    write_lines(raw / "inter.txt", ["1 1", "1 2", "1 2 3"])
    with pytest.raises(DatasetFormatError, match=r"inter\.txt:3: expected 2 columns"):
        convert("Yelp", raw, out)
    write_lines(raw / "inter.txt", ["1 1", "x 2"])
    with pytest.raises(DatasetFormatError, match=r"inter\.txt:2: ids must be"):
        convert("Yelp", raw, out)
    assert_nothing_left(out)


def test_shared_beauty_errors(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    write_lines(raw / "user_sequence.txt", ["U1 I1 I2", "U2 I2 I1"])
    write_lines(raw / "Amazon_Beauty.item", ["item_id:token\ttitle:token", "I1\tOne", "I2\tTwo"])
    res = convert("Amazon_Beauty", raw, out)
    assert res["counts"] == {"users": 2, "items": 2, "interactions": 4}
    _, rows = read_table(out / "Amazon_Beauty" / "Amazon_Beauty.inter")
    assert rows == [["U1", "I1", "0"], ["U1", "I2", "1"], ["U2", "I2", "0"], ["U2", "I1", "1"]]

    out2 = tmp_path / "out2"
    write_lines(raw / "Amazon_Beauty.item", ["item_id:token\ttitle:blob", "I1\tOne"])
    with pytest.raises(DatasetFormatError, match=r"Amazon_Beauty\.item:1: .*unknown type"):
        convert("Amazon_Beauty", raw, out2)
    write_lines(raw / "Amazon_Beauty.item", ["item_id:token\ttitle:token", "I1\tOne", "I2"])
    with pytest.raises(DatasetFormatError, match=r"Amazon_Beauty\.item:3: expected 2"):
        convert("Amazon_Beauty", raw, out2)
    write_lines(raw / "Amazon_Beauty.item", ["item_id:token\ttitle:token", "I1\tOne", "I2\tT"])
    write_lines(raw / "user_sequence.txt", ["U1 I1 I2", "U2"])
    with pytest.raises(DatasetFormatError, match=r"user_sequence\.txt:2:"):
        convert("Amazon_Beauty", raw, out2)
    (raw / "Amazon_Beauty.item").unlink()
    with pytest.raises(DatasetFormatError, match=r"Amazon_Beauty\.item: no such file"):
        convert("Amazon_Beauty", raw, out2)
    assert_nothing_left(out2)
    with pytest.raises(DatasetFormatError, match="holds no known source files"):
        convert("Amazon_Beauty", tmp_path / "out", out2)
    with pytest.raises(DatasetFormatError, match="does not exist"):
        convert("Amazon_Beauty", tmp_path / "nowhere", out2)
    with pytest.raises(KeyError, match="known: ml-100k"):
        convert("Nope", raw, out2)


# ----------------------------------------------------------------------------------------
# Writing: existing output, --force, failure while writing
# ----------------------------------------------------------------------------------------
def test_existing_force_and_failed_write(tmp_path, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "out"
    fashion2018_fixture(raw)
    convert("Amazon_Fashion", raw, out)
    keep = out / "Amazon_Fashion" / "Amazon_Fashion.archetype"
    keep.write_text("someone else's file")
    inter = out / "Amazon_Fashion" / "Amazon_Fashion.inter"
    before = inter.read_bytes()

    with pytest.raises(DatasetExistsError, match="--force"):
        convert("Amazon_Fashion", raw, out)

    calls = []

    def failing_write(path, table):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(path, table)

    real_write = conv.write_atomic
    monkeypatch.setattr(conv, "write_atomic", failing_write)
    with pytest.raises(OSError, match="disk full"):
        convert("Amazon_Fashion", raw, out, force=True)
    assert inter.read_bytes() == before  # old output untouched
    assert sorted(p.name for p in out.iterdir()) == ["Amazon_Fashion"]  # no temp dir
    monkeypatch.setattr(conv, "write_atomic", real_write)

    res = convert("Amazon_Fashion", raw, out, force=True)
    assert res["paths"]["inter"] == inter
    assert keep.read_text() == "someone else's file"  # other files in NAME/ are kept

    fresh = tmp_path / "fresh"
    monkeypatch.setattr(conv, "write_atomic", failing_write)
    calls.clear()
    with pytest.raises(OSError):
        convert("Amazon_Fashion", raw, fresh)
    assert_nothing_left(fresh)


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------
def test_cli(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    fashion2018_fixture(raw)
    args = ["Amazon_Fashion", "--raw-dir", str(raw), "--out-dir", str(out), "--no-progress"]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "4 users / 4 items / 15 interactions" in text
    assert str(out / "Amazon_Fashion" / "Amazon_Fashion.inter") in text
    assert cli.main(args) == 0
    assert "--force" in capsys.readouterr().out
    assert cli.main(args + ["--force"]) == 0

    assert cli.main(["Nope", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert all(n in err for n in conv.KNOWN_DATASETS)

    assert cli.main(["Yelp", "--raw-dir", str(raw), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no known source files" in err


def test_cli_module_runs():
    proc = subprocess.run([sys.executable, "-m", "recbole_genair.datasets", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "Amazon_Beauty" in proc.stdout and "--raw-dir" in proc.stdout


# ----------------------------------------------------------------------------------------
# ml-100k from the recbole wheel
# ----------------------------------------------------------------------------------------
def test_ml100k_from_wheel(tmp_path):
    res = conv.convert("ml-100k", out_dir=tmp_path, progress=False)
    assert res["counts"] == {"users": 943, "items": 1682, "interactions": 100000}
    header, rows = read_table(tmp_path / "ml-100k" / "ml-100k.inter")
    assert header == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    seqs = sequences(rows)
    assert len(seqs) == 943
    for user in ("1", "500"):
        times = [float(r[3]) for r in rows if r[0] == user]
        assert times == sorted(times)
    header, rows = read_table(tmp_path / "ml-100k" / "ml-100k.item")
    assert header[0] == "item_id:token" and "class:token_seq" in header
    assert "movie_title:token" in header
    assert rows[0][:2] == ["1", "Toy Story"]


# ----------------------------------------------------------------------------------------
# Real shared data
# ----------------------------------------------------------------------------------------
@needs_shared
@pytest.mark.parametrize("name,counts", [
    ("Amazon_Beauty", (22363, 12101, 198502)),
    ("Amazon_Fashion", (9094, 4722, 34759)),
    ("Yelp", (15720, 11383, 192214)),
])
def test_shared_counts(tmp_path, name, counts):
    res = conv.convert(name, out_dir=tmp_path, progress=False)
    c = res["counts"]
    assert (c["users"], c["items"], c["interactions"]) == counts
    _, inter = read_table(tmp_path / name / f"{name}.inter")
    _, items = read_table(tmp_path / name / f"{name}.item")
    assert len(inter) == counts[2]
    assert len(items) == counts[1] == len({r[0] for r in items})
    assert {r[0] for r in items} == {r[1] for r in inter}
    assert len(sequences(inter)) == counts[0]


@needs_shared
def test_shared_beauty_order_and_fields(tmp_path):
    conv.convert("Amazon_Beauty", out_dir=tmp_path, progress=False)
    first = (SHARED / "amazon_beauty_5core" / "user_sequence.txt").open().readline().split()
    _, inter = read_table(tmp_path / "Amazon_Beauty" / "Amazon_Beauty.inter")
    user_rows = [r for r in inter if r[0] == first[0]]
    assert [r[1] for r in user_rows] == first[1:]
    assert [r[2] for r in user_rows] == [str(k) for k in range(len(first) - 1)]
    assert inter[:len(first) - 1] == user_rows  # the first user comes first

    header, items = read_table(tmp_path / "Amazon_Beauty" / "Amazon_Beauty.item")
    assert header == ["item_id:token", "title:token", "sales_type:token", "sales_rank:float",
                      "categories:token_seq", "price:float", "brand:token"]
    byid = {r[0]: r for r in items}
    assert byid["7806397051"][1].startswith("WAWO 15 Color")
    assert conv.parse_list_value(byid["7806397051"][4])[:2] == ["Beauty", "Makeup"]
    assert sum(1 for r in items if r[1]) >= 12090  # titles kept


@needs_shared
def test_recbole_loads_written_fashion(tmp_path):
    from recbole.config import Config
    from recbole.data import create_dataset

    conv.convert("Amazon_Fashion", out_dir=tmp_path, progress=False)
    config = Config(model="SASRec", dataset="Amazon_Fashion", config_dict={
        "data_path": str(tmp_path), "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "use_gpu": False, "show_progress": False, "checkpoint_dir": str(tmp_path / "saved"),
        "train_neg_sample_args": None,  # SASRec's CE loss (RecBole 1.2.1 insists)
    })
    dataset = create_dataset(config)
    assert dataset.user_num - 1 == 9094
    assert dataset.item_num - 1 == 4722
    assert dataset.inter_num == 34759


def test_recbole_loads_item_features(tmp_path):
    """The written .item (quoted value, lists, empty floats) parses in RecBole."""
    from recbole.config import Config
    from recbole.data import create_dataset

    raw = tmp_path / "raw"
    beauty2014_fixture(raw)
    conv.convert("Amazon_Beauty", raw_dir=raw, out_dir=tmp_path, progress=False)
    config = Config(model="SASRec", dataset="Amazon_Beauty", config_dict={
        "data_path": str(tmp_path), "load_col": None, "use_gpu": False,
        "show_progress": False, "checkpoint_dir": str(tmp_path / "saved"),
        "MAX_ITEM_LIST_LENGTH": 5, "train_neg_sample_args": None,
    })
    dataset = create_dataset(config)
    assert dataset.item_num - 1 == 4
    tokens = set(dataset.field2id_token["title"].tolist())
    assert {'"Quoted" shampoo', "Rose Lip Balm", "Soap"} <= tokens


@needs_shared
def test_committed_beauty_archetypes_cover_the_converted_items(tmp_path):
    """The committed Beauty texts and features name exactly the items the converter writes."""
    import json

    from recbole_genair.paths import DATASET_DIR

    conv.convert("Amazon_Beauty", out_dir=tmp_path, progress=False)
    _, items = read_table(tmp_path / "Amazon_Beauty" / "Amazon_Beauty.item")
    tokens = {r[0] for r in items}
    header, rows = read_table(DATASET_DIR / "Amazon_Beauty" / "Amazon_Beauty.archetype")
    assert header == ["item_id:token", "prefill_emb:float_seq", "decoding_emb:float_seq"]
    assert len(rows) == len(tokens) == 12101 and {r[0] for r in rows} == tokens
    meta = json.loads((DATASET_DIR / "Amazon_Beauty" / "archetypes" /
                       "Amazon_Beauty.archetypes.meta.json").read_text())
    widths = (meta["features"]["prefill_dims"]["components"], meta["features"]["decoding_dims"]["components"])
    assert all((len(r[1].split()), len(r[2].split())) == widths for r in rows)
    with open(DATASET_DIR / "Amazon_Beauty" / "archetypes" / "Amazon_Beauty.archetypes.jsonl") as fh:
        texts = [json.loads(line) for line in fh]
    assert {t["item_id"] for t in texts} == tokens and all(t["archetype"].strip() for t in texts)
    assert all("prompt_crc" in t for t in texts)  # an edited item's prompt no longer matches its text
