"""FastChat's llm_judge/show_result.py (display_result_single, display_result_pairwise), restated
with pandas as FastChat computes them, for the eval tests: prints the scores of a judgment file
as JSON. Usage: fastchat_show_result.py single FILE | pairwise FILE BASELINE"""
import json
import sys

import pandas as pd


def single(path):
    df_all = pd.read_json(path, lines=True)
    df = df_all[["model", "score", "turn"]]
    df = df[df["score"] != -1]
    first = df[df["turn"] == 1].groupby(["model", "turn"]).mean()
    second = df[df["turn"] == 2].groupby(["model", "turn"]).mean()
    average = df[["model", "score"]].groupby(["model"]).mean()
    return {
        model: {
            "overall": float(average.loc[model, "score"]),
            "turn1": float(first.loc[(model, 1), "score"]),
            "turn2": float(second.loc[(model, 2), "score"]),
        }
        for model in average.index
    }


def pairwise(path, baseline):
    df_all = pd.read_json(path, lines=True)
    df_all = df_all[(df_all["g1_winner"] != "error") & (df_all["g2_winner"] != "error")]
    results = []
    for _, row in df_all.iterrows():
        if baseline not in [row["model_1"], row["model_2"]]:
            continue
        if row["g1_winner"] == "tie" or row["g1_winner"] != row["g2_winner"]:
            results.append({"model": row["model_1"], "win": 0, "loss": 0, "tie": 1})
            results.append({"model": row["model_2"], "win": 0, "loss": 0, "tie": 1})
        else:
            if row["g1_winner"] == "model_1":
                winner, loser = row["model_1"], row["model_2"]
            else:
                winner, loser = row["model_2"], row["model_1"]
            results.append({"model": winner, "win": 1, "loss": 0, "tie": 0})
            results.append({"model": loser, "win": 0, "loss": 1, "tie": 0})
    df = pd.DataFrame(results).groupby(["model"]).sum()
    df = df[df.index != baseline]
    games = df["win"] + df["loss"] + df["tie"]
    df["win_rate"] = df["win"] / games
    df["loss_rate"] = df["loss"] / games
    df["win_rate_adjusted"] = (df["win"] + 0.5 * df["tie"]) / games
    return {
        model: {key: float(df.loc[model, key]) if "rate" in key else int(df.loc[model, key]) for key in ["win", "loss", "tie", "win_rate", "loss_rate", "win_rate_adjusted"]}
        for model in df.index
    }


if __name__ == "__main__":
    if sys.argv[1] == "single":
        print(json.dumps(single(sys.argv[2])))
    else:
        print(json.dumps(pairwise(sys.argv[2], sys.argv[3])))
