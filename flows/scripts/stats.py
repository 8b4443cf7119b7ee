# A step script: reads `inputs`, fills `outputs`. Runs in the sandbox, like inline scripts.
import statistics

scores = inputs["scores"]


def grade(score):
    if score >= 90:
        return "A"
    if score >= 80:
        return "B"
    return "C"


outputs["mean"] = round(statistics.mean(scores), 2)
outputs["best"] = max(scores)
outputs["grades"] = [grade(s) for s in scores]
log("graded", len(scores), "scores")
