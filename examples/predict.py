"""What the published laws say for a run, with the Step Law's uncertainty.

python examples/predict.py
"""

from steplaw_opt import Scale, list_laws, load_law

target = Scale(N=7e9, D=1.4e12)  # a 7B model on 1.4T tokens
p = load_law("step-law").predict(target, round_batch="pow2")
low, high = p.lr_intervals[1].low, p.lr_intervals[1].high  # the law's mean
print(
    f"Step Law: lr {p.lr:.3g} (law's mean, 95 %: {low:.3g} – {high:.3g}), "
    f"batch {p.batch_tokens / 1e6:.2f}M tokens ≈ {p.batch_rounded_sequences:.0f} sequences"
)
opt = p.optimum.lr[1]  # where the optimum is: + the residual scatter, widened out here
print(f"  the optimum, 95 %: lr {opt.low:.3g} – {opt.high:.3g}")
print("extrapolated in:", ", ".join(p.extrapolated) or "nothing")
for law in list_laws():
    q = law.predict(target)
    lr = "—" if q.lr is None else f"{q.lr:.3g}"
    print(f"  {law.name:14s} lr {lr:>9}  {q.missing or law.warning}")
