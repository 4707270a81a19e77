"""The simulated people of the review benchmark (bench/simulated_people.py): how each answers from a face's FER+
votes, and the Label Studio export they write."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures import load_script

people = load_script("bench/simulated_people.py", "simulated_people")

VOTES = {"Fear": 6, "Sadness": 3, "unsure": 1}


def test_one_vote_draws_each_answer_as_often_as_the_crowd_gave_it() -> None:
    drawn = [people.answer("one_vote", VOTES, "Fear", key=f"k{i}", seed=0) for i in range(4000)]
    shares = {a: drawn.count(a) / len(drawn) for a in set(drawn)}
    assert set(shares) == {"Fear", "Sadness", "unsure"}
    assert (
        abs(shares["Fear"] - 0.6) < 0.03 and abs(shares["Sadness"] - 0.3) < 0.03 and abs(shares["unsure"] - 0.1) < 0.02
    )
    again = [people.answer("one_vote", VOTES, "Fear", key=f"k{i}", seed=0) for i in range(4000)]
    assert again == drawn  # seeded by (seed, key)
    other = [people.answer("one_vote", VOTES, "Fear", key=f"k{i}", seed=1) for i in range(4000)]
    assert other != drawn


def test_expert_answers_the_majority_and_unsure_on_a_tie() -> None:
    assert people.answer("expert", VOTES, "Anger", key="k", seed=0) == "Fear"
    assert people.answer("expert", {"Fear": 4, "Anger": 4, "Neutral": 2}, "Anger", key="k", seed=0) == "unsure"


def test_oracle_answers_the_fer2013_label() -> None:
    assert people.answer("oracle", VOTES, "Anger", key="k", seed=0) == "Anger"


def test_votes_map_contempt_and_unknown_to_unsure_and_nf_to_not_a_face(tmp_path: Path) -> None:
    head = "path,usage,fer2013_label," + ",".join(people.VOTE_COLUMNS)
    (tmp_path / "labels.csv").write_text(head + "\nFER2013Train/fer0000001.png,Training,2,0,0,0,0,0,0,5,2,1,2\n")
    votes = people.load_votes(tmp_path / "labels.csv")
    assert votes == {
        "FER2013Train/fer0000001.png": {"votes": {"Fear": 5, "unsure": 3, "not a face": 2}, "fer2013": "Fear"}
    }


def test_the_export_holds_one_annotation_per_task_and_skips_where_no_answer() -> None:
    tasks = [{"data": {"key": "a", "batch": "b"}}, {"data": {"key": "c", "batch": "b"}}]
    votes = {
        "p/a.png": {"votes": {"Happiness": 10}, "fer2013": "Happiness"},
        "p/c.png": {"votes": {}, "fer2013": None},
    }
    out = people.export_for(tasks, {"a": "p/a.png", "c": "p/c.png"}, votes, "one_vote", 0)
    assert [t["data"] for t in out] == [t["data"] for t in tasks]
    assert out[0]["annotations"][0]["result"][0]["value"]["choices"] == ["Happiness"]
    assert out[1]["annotations"][0]["was_cancelled"] is True and out[1]["annotations"][0]["result"] == []
