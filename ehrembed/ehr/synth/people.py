"""The latent cohort of one shard: demographics, smoking and BMI, chronic condition onsets and death,
and the visit schedule (outpatient, emergency, inpatient stays with length of stay and readmissions)."""

from __future__ import annotations

import numpy as np

from .config import HOUR, KEY, MINUTE, YEAR, Arr, SynthConfig
from .events import Events, Visits, choice, sigmoid
from .tables import ER, IP, OP, icd_code, ix, tables


class People:
    """Who a shard's ``n`` subjects are, what they develop and when they come: every array is indexed by
    subject 0..n-1 (visits by visit). :class:`~ehrembed.ehr.synth.shard.Shard` turns them into events."""

    def __init__(self, cfg: SynthConfig, shard_index: int, first_sid: int, first_vid: int, n: int) -> None:
        self.cfg = cfg
        self.n = n
        self.first_sid = first_sid
        self.first_vid = first_vid
        self.rng = np.random.default_rng([cfg.seed, shard_index])
        self.W = cfg.window_days
        self.ev = Events()
        self.counts: dict[str, int] = {}

    # subjects, conditions and death -------------------------------------------------------
    def subjects(self) -> None:
        rng, n = self.rng, self.n
        self.male = rng.random(n) < 0.48
        old = rng.random(n) < 0.3
        self.age0 = np.where(old, rng.uniform(65, 90, n), rng.uniform(18, 65, n))
        self.birth = -np.floor(self.age0 * YEAR) - 1.0
        self.race = choice(rng, np.tile([r[2] for r in tables().races], (n, 1)))
        self.hispanic = rng.random(n) < 0.18
        self.height = np.where(self.male, rng.normal(1.76, 0.07, n), rng.normal(1.62, 0.065, n))
        self.bmi0 = np.clip(27.5 * np.exp(rng.normal(0.0, 0.19, n)), 16.0, 60.0)
        self.bmi_trend = rng.normal(0.08, 0.25, n)
        smoke = rng.random(n)
        self.smoker = smoke < 0.15
        self.former = (smoke >= 0.15) & (smoke < 0.35)
        self.predm = rng.random(n) < sigmoid(-1.7 + 0.03 * (self.age0 - 50) + 0.08 * (self.bmi0 - 28))

    def age(self, sub: Arr, t: Arr) -> Arr:
        return (t - self.birth[sub]) / YEAR

    def conditions(self) -> None:
        rng, n, cfg = self.rng, self.n, self.cfg
        years = int(np.ceil(self.W / YEAR))
        onset: dict[str, Arr] = {}
        for c in tables().chronic:
            extra = 1.2 * self.predm if c.key == "dm" else 0.0
            fixed = c.male * self.male + c.smoker * self.smoker + extra
            lin0 = c.age * (self.age0 - 50) + c.bmi * (self.bmi0 - 28) + fixed
            lin0 = lin0 + sum(w * (onset[d] <= 0) for d, w in c.deps)
            t = np.full(n, np.inf)
            prevalent = rng.random(n) < sigmoid(c.prev + lin0)
            t[prevalent] = -rng.uniform(30, 3650, int(prevalent.sum()))
            u = rng.random((years, n))
            when = rng.random((years, n))
            for y in range(years):
                lin = c.age * (self.age0 + y - 50) + c.bmi * (self.bmi0 + self.bmi_trend * y - 28) + fixed
                lin = lin + sum(w * (onset[d] <= y * YEAR) for d, w in c.deps)
                p = -np.expm1(-np.exp(c.inc + lin) * cfg.disease_scale)
                new = np.isinf(t) & (u[y] < p)
                t[new] = (y + when[y][new]) * YEAR
            t[t >= self.W] = np.inf
            onset[c.key] = t
        self.onset = onset

        # death: Gompertz in age, raised by comorbidity, on a yearly grid
        u = rng.random((years, n))
        when = rng.random((years, n))
        death = np.full(n, np.inf)
        for y in range(years):
            t0 = y * YEAR
            lin = -11.4 + 0.088 * (self.age0 + y) + 0.3 * self.smoker
            for key, w in (("hf", 0.9), ("ckd", 0.5), ("copd", 0.6), ("dm", 0.3), ("cad", 0.3), ("af", 0.2)):
                lin = lin + w * (onset[key] <= t0)
            new = np.isinf(death) & (u[y] < -np.expm1(-np.exp(lin)))
            death[new] = (y + when[y][new]) * YEAR
        death[death >= self.W] = np.inf
        self.death = death
        self.obs_end = np.minimum(self.W, death)
        late = rng.random(n) < 0.45
        obs_start = np.where(late, rng.uniform(0, 0.6 * self.W, n), rng.uniform(0, 45, n))
        self.obs_start = np.where(obs_start >= self.obs_end - 1, self.obs_end * rng.uniform(0, 0.5, n), obs_start)

    def active(self, key: str, sub: Arr, t: Arr) -> Arr:
        return self.onset[key][sub] <= t

    def burden(self, sub: Arr, t: Arr) -> Arr:
        return sum((self.active(k, sub, t) for k in tables().major), np.zeros(len(sub)))

    # visits -------------------------------------------------------------------------------
    _IP_REASONS = (
        "J18.9", "N39.0", "R07.9", "R55", "K92.2", "E86.0", "I21.9", "I63.9", "J44.1", "I50.9", "N17.9", "E11.65",
        "I48.91",
    )  # fmt: skip
    _IP_LOS = (0.15, 0.0, -0.5, -0.3, 0.1, -0.3, 0.3, 0.5, 0.1, 0.25, 0.2, -0.1, -0.2)

    def _ip_reason(self, sub: Arr, t: Arr) -> Arr:
        a = {k: self.active(k, sub, t).astype(float) for k in ("cad", "af", "copd", "hf", "ckd", "dm")}
        one = np.ones(len(sub))
        w = np.column_stack(
            [1.0 * one, 0.7 * one, 0.6 * one, 0.4 * one, 0.3 * one, 0.4 * one, 0.15 + 0.8 * a["cad"],
             0.15 + 0.6 * a["af"], 1.5 * a["copd"], 0.05 + 2.5 * a["hf"], 0.2 + 1.0 * a["ckd"], 0.7 * a["dm"],
             0.3 * a["af"]]
        )  # fmt: skip
        return choice(self.rng, w)

    def _los(self, sub: Arr, t: Arr, reason: Arr) -> Arr:
        """Length of stay in days: longer with comorbidity burden, age and serious reasons."""
        mu = (
            np.log(2.3)
            + 0.13 * self.burden(sub, t)
            + 0.012 * (self.age(sub, t) - 60)
            + np.asarray(self._IP_LOS)[reason]
        )
        return np.clip(np.exp(mu + self.rng.normal(0, 0.6, len(sub))), 0.3, 45.0)

    def _readmit_p(self, sub: Arr, t: Arr, los: Arr) -> Arr:
        p = 0.06 + 0.12 * self.active("hf", sub, t) + 0.08 * self.active("ckd", sub, t)
        return p + 0.05 * self.active("copd", sub, t) + 0.03 * self.active("dm", sub, t) + 0.03 * (los >= 7)

    def visits(self) -> None:
        rng, n, cfg = self.rng, self.n, self.cfg
        span = self.obs_end - self.obs_start
        mid = (self.obs_start + self.obs_end) / 2
        idx = np.arange(n)
        nact = self.burden(idx, mid) + sum(self.active(k, idx, mid) for k in ("hld", "dep", "hypothy", "gerd", "oa"))
        age_mid = self.age(idx, mid)

        # outpatient: rate grows with conditions and age; the first one opens observation
        rate = np.clip(0.9 + 0.45 * nact + 0.01 * (age_mid - 50), 0.4, 7.0) * cfg.visit_scale
        n_op = rng.poisson(rate * span / YEAR) + 1
        op_sub = np.repeat(idx, n_op)
        op_t = self.obs_start[op_sub] + rng.random(len(op_sub)) * span[op_sub]
        op_t[np.cumsum(n_op) - n_op] = self.obs_start + rng.uniform(0, 20, n)
        op_start = np.floor(op_t) + rng.uniform(8 * HOUR, 16.5 * HOUR, len(op_sub))
        op_end = op_start + rng.uniform(25, 60, len(op_sub)) * MINUTE

        # emergency room
        lin = -2.4 + 0.01 * (age_mid - 50) + 0.15 * nact
        n_er = rng.poisson(np.exp(lin) * cfg.visit_scale * span / YEAR)
        er_sub = np.repeat(idx, n_er)
        er_start = self.obs_start[er_sub] + rng.random(len(er_sub)) * span[er_sub]
        # atrial fibrillation sometimes presents in the ER
        af = self.onset["af"]
        trig = (af > self.obs_start) & (af < self.obs_end) & (rng.random(n) < 0.15)
        er_sub = np.concatenate([er_sub, idx[trig]])
        er_start = np.concatenate([er_start, af[trig] + rng.uniform(0, 2, int(trig.sum()))])
        er_end = er_start + rng.uniform(2, 8, len(er_sub)) * HOUR
        er_reason = self._er_reason(len(er_sub))
        er_reason[len(er_sub) - int(trig.sum()) :] = ix(icd_code("I48.91"))

        # inpatient: background, at heart-failure / AF onset, terminal, then readmissions
        lin = -3.3 + 0.03 * (age_mid - 50)
        for key, w in (("hf", 0.7), ("ckd", 0.5), ("copd", 0.6), ("dm", 0.3), ("cad", 0.3), ("af", 0.3)):
            lin = lin + w * self.active(key, idx, mid)
        n_ip = rng.poisson(np.exp(lin) * cfg.visit_scale * span / YEAR)
        ip_sub = np.repeat(idx, n_ip)
        ip_start = self.obs_start[ip_sub] + rng.random(len(ip_sub)) * span[ip_sub]
        ip_reason = self._ip_reason(ip_sub, ip_start)
        for key, p, code in (("hf", 0.5, "I50.9"), ("af", 0.12, "I48.91")):
            on = self.onset[key]
            trig = (on > self.obs_start) & (on < self.obs_end) & (rng.random(n) < p)
            ip_sub = np.concatenate([ip_sub, idx[trig]])
            ip_start = np.concatenate([ip_start, on[trig] + rng.uniform(0, 2, int(trig.sum()))])
            ip_reason = np.concatenate([ip_reason, np.full(int(trig.sum()), self._IP_REASONS.index(code))])
        ip_los = self._los(ip_sub, ip_start, ip_reason)
        ip_end = ip_start + ip_los
        # terminal admissions end at death
        dies = np.isfinite(self.death) & (rng.random(n) < 0.35)
        t_sub = idx[dies]
        t_reason = self._ip_reason(t_sub, self.death[dies])
        t_los = self._los(t_sub, self.death[dies], t_reason)
        ip_sub = np.concatenate([ip_sub, t_sub])
        ip_start = np.concatenate([ip_start, self.death[dies] - t_los])
        ip_end = np.concatenate([ip_end, self.death[dies]])
        ip_reason = np.concatenate([ip_reason, t_reason])
        terminal = np.zeros(len(ip_sub), bool)
        terminal[len(terminal) - len(t_sub) :] = True
        # readmissions, two rounds
        src = np.flatnonzero(~terminal)
        for _ in range(2):
            p_re = self._readmit_p(ip_sub[src], ip_end[src], ip_end[src] - ip_start[src])
            go = src[rng.random(len(src)) < p_re]
            r_sub = ip_sub[go]
            r_start = ip_end[go] + np.minimum(rng.exponential(11.0, len(go)), 90.0) + 0.2
            r_reason = self._ip_reason(r_sub, r_start)
            r_end = r_start + self._los(r_sub, r_start, r_reason)
            src = np.arange(len(ip_sub), len(ip_sub) + len(go))
            ip_sub = np.concatenate([ip_sub, r_sub])
            ip_start = np.concatenate([ip_start, r_start])
            ip_end = np.concatenate([ip_end, r_end])
            ip_reason = np.concatenate([ip_reason, r_reason])
        ip_reason = np.asarray([ix(icd_code(c)) for c in self._IP_REASONS])[ip_reason]
        # dying in hospital cuts the stay at death
        ip_end = np.minimum(ip_end, self.death[ip_sub])

        sub = np.concatenate([op_sub, er_sub, ip_sub])
        kind = np.concatenate([np.full(len(op_sub), OP), np.full(len(er_sub), ER), np.full(len(ip_sub), IP)])
        start = np.concatenate([op_start, er_start, ip_start])
        end = np.concatenate([op_end, er_end, ip_end])
        reason = np.concatenate([np.full(len(op_sub), -1), er_reason, ip_reason])
        keep = (start >= self.obs_start[sub]) & (end <= self.obs_end[sub]) & (end > start)
        sub, kind, start, end, reason = sub[keep], kind[keep], start[keep], end[keep], reason[keep]
        order = np.lexsort((start, sub))
        sub, kind, start, end, reason = sub[order], kind[order], start[order], end[order], reason[order]
        # nothing may start while an earlier stay of the same subject is still open
        ends = np.where(kind == IP, sub * KEY + end, -np.inf)
        prev_open = np.concatenate([[-np.inf], np.maximum.accumulate(ends)[:-1]])
        ok = sub * KEY + start >= prev_open
        self.v = Visits(sub[ok], kind[ok], start[ok], end[ok], reason[ok], (sub * KEY + start)[ok])

    def _er_reason(self, m: int) -> Arr:
        codes = ("R07.9", "R10.9", "R51.9", "J06.9", "R42", "M54.50", "R55", "N39.0")
        w = np.tile([0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], (m, 1))
        table = np.asarray([ix(icd_code(c)) for c in codes])
        return table[choice(self.rng, w)] if m else np.zeros(0, dtype=int)
