"""One shard's events: statics, visits, diagnoses, symptoms, drugs, latent lab trajectories, labs, vitals
and procedures, written from the latent cohort of :class:`~ehrembed.ehr.synth.people.People`."""

from __future__ import annotations

import numpy as np
import polars as pl

from ehrembed import schema as s

from .config import HOUR, MINUTE, YEAR, Arr
from .events import (
    P_BIRTH,
    P_DEATH,
    P_DRUG,
    P_DX,
    P_END,
    P_LAB,
    P_PROC,
    P_STATIC,
    P_VISIT,
    P_VITAL,
    choice,
    expand,
    ramp,
)
from .people import People
from .tables import ER, IP, OP, icd_code, ix, tables


class Shard(People):
    """Generate the events of ``n`` subjects (:meth:`run`)."""

    # clinical content ---------------------------------------------------------------------
    def emit_visits(self) -> None:
        v, ev = self.v, self.ev
        vid = np.arange(len(v))
        codes = np.asarray([ix(c) for c, _ in tables().visits])
        ev.add(v.sub, v.start, codes[v.kind], P_VISIT, visit=vid)
        ev.add(v.sub, v.end, ix(s.VISIT_END_CODE), P_END, visit=vid, text=codes[v.kind])

        # when things happen inside a visit (never after its end: a stay may be cut short by death);
        # one trailing inf so that visit index -1 ("none") reads as never
        def at(offset: Arr) -> Arr:
            return np.append(np.minimum(v.start + offset, v.end), np.inf)

        self.t_vital = at(np.where(v.kind == OP, 5, 10) * MINUTE)
        self.t_lab = at(np.select([v.kind == OP, v.kind == ER], [15 * MINUTE, 30 * MINUTE], HOUR))
        self.t_proc = at(np.select([v.kind == OP, v.kind == ER], [20 * MINUTE, 40 * MINUTE], 2 * HOUR))
        self.t_reason = at(np.where(v.kind == ER, 15 * MINUTE, 30 * MINUTE))
        self.t_refill = at(np.where(v.kind == IP, 2 * HOUR, v.end - v.start))
        self.t_dx = np.append(v.end, np.inf)
        for k, (code, _) in enumerate(tables().visits):
            self.counts[f"visits/{code.removeprefix('Visit/')}"] = int((v.kind == k).sum())

    def emit_statics(self) -> None:
        ev, idx = self.ev, np.arange(self.n)
        ev.add(idx, np.nan, np.where(self.male, ix("Gender/M"), ix("Gender/F")), P_STATIC)
        race = np.asarray([ix(r[0]) for r in tables().races])[self.race]
        ev.add(idx, np.nan, race, P_STATIC)
        eth = np.where(self.hispanic, ix("Ethnicity/Hispanic"), ix("Ethnicity/NotHispanic"))
        ev.add(idx, np.nan, eth, P_STATIC)
        ev.add(idx, self.birth, ix(s.BIRTH_CODE), P_BIRTH)
        dead = np.flatnonzero(np.isfinite(self.death))
        ev.add(dead, self.death[dead], ix(s.DEATH_CODE), P_DEATH)

    def diagnoses(self) -> None:
        """Chronic diagnoses at the first visit after onset plus a delay, then at follow-ups."""
        rng, v, idx = self.rng, self.v, np.arange(self.n)
        self.dx_visit: dict[str, Arr] = {}
        self.dx_time: dict[str, Arr] = {}
        repeat_p = np.array([0.3, 0.75, 0.15])  # OP, IP, ER
        for c in tables().chronic:
            t = self.onset[c.key]
            when = np.where(
                t <= self.obs_start,
                self.obs_start + rng.exponential(150.0, self.n),
                t + rng.exponential(c.delay, self.n),
            )
            if c.key in ("hf", "af"):  # acute presentations are diagnosed where they present
                when = np.where(t > self.obs_start, t, when)
            j = v.first_at_or_after(idx, np.where(np.isfinite(t), when, np.inf))
            self.dx_visit[c.key] = j
            self.dx_time[c.key] = self.t_dx[j]
            code = ix(icd_code(c.icd))
            has = np.flatnonzero(j >= 0)
            self.ev.add(has, self.t_dx[j[has]], code, P_DX, visit=j[has])
            d = j[v.sub]
            rep = np.flatnonzero((d >= 0) & (np.arange(len(v)) > d) & (rng.random(len(v)) < repeat_p[v.kind]))
            self.ev.add(v.sub[rep], self.t_dx[rep], code, P_DX, visit=rep)
        # smoking status at some visits
        for mask, smoke_code, p in ((self.smoker, "F17.210", 0.2), (self.former, "Z87.891", 0.1)):
            sel = np.flatnonzero(mask[v.sub] & (rng.random(len(v)) < p))
            self.ev.add(v.sub[sel], self.t_dx[sel], ix(icd_code(smoke_code)), P_DX, visit=sel)

    def reasons_and_symptoms(self) -> None:
        """Admission/ER reasons, outpatient episodes and the planted prodromal symptoms."""
        rng, v, ev = self.rng, self.v, self.ev
        n_v = len(v)
        has_reason = np.flatnonzero(v.reason >= 0)
        ev.add(v.sub[has_reason], self.t_reason[has_reason], v.reason[has_reason], P_DX, visit=has_reason)
        # outpatient episodes
        op = np.flatnonzero((v.kind == OP) & (rng.random(n_v) < 0.45))
        episodes = ("Z00.00", "J06.9", "M54.50", "R05.9", "R51.9", "Z23", "R10.9")
        ep_codes = np.asarray([ix(icd_code(c)) for c in episodes])
        pick = choice(rng, np.tile([0.35, 0.2, 0.15, 0.1, 0.08, 0.06, 0.06], (len(op), 1)))
        ev.add(v.sub[op], self.t_dx[op], ep_codes[pick], P_DX, visit=op)
        # symptoms: likely in the year before (and month after) onset, rare otherwise
        symptoms = (
            ("R00.2", (("af", 0.3),), 0.008),
            ("R06.00", (("hf", 0.3), ("copd", 0.15)), 0.01),
            ("R60.0", (("hf", 0.25),), 0.008),
            ("R05.9", (("copd", 0.25),), 0.01),
            ("R53.83", (("ckd", 0.1), ("anemia", 0.2)), 0.01),
            ("R35.0", (("dm", 0.12),), 0.005),
            ("R07.89", (("cad", 0.15),), 0.008),
        )
        t = v.start
        self.palpitations = np.zeros(n_v, bool)
        for code, causes, p_bg in symptoms:
            p = np.full(n_v, p_bg)
            for key, p_pre in causes:
                on = self.onset[key][v.sub]
                p = np.where((t >= on - YEAR) & (t < on + 30), np.maximum(p, p_pre), p)
            sel = rng.random(n_v) < p
            if code == "R00.2":
                self.palpitations = sel
            idx = np.flatnonzero(sel)
            when = np.where(v.kind[idx] == IP, self.t_reason[idx], self.t_dx[idx])
            ev.add(v.sub[idx], when, ix(icd_code(code)), P_DX, visit=idx)

    def drugs(self) -> None:
        """Drugs start at the visit that diagnosed their indication; refills at later visits."""
        rng, v, n = self.rng, self.v, self.n
        none = np.iinfo(np.int64).max
        start = {g: np.full(n, none, dtype=np.int64) for g in tables().drugs}

        def give(drug: str, visit: Arr, p: float | Arr) -> None:
            ok = (visit >= 0) & (rng.random(n) < p)
            start[drug] = np.where(ok, np.minimum(start[drug], visit), start[drug])

        dx = self.dx_visit
        htn_pick = choice(rng, np.tile([0.5, 0.25, 0.15, 0.1], (n, 1)))
        for k, drug in enumerate(("lisinopril", "amlodipine", "hctz")):
            give(drug, np.where(htn_pick == k, dx["htn"], -1), 1.0)
        give("atorvastatin", dx["hld"], 0.7)
        give("atorvastatin", dx["cad"], 0.8)
        give("aspirin", dx["cad"], 0.7)
        give("metformin", dx["dm"], 0.85)
        give("apixaban", dx["af"], 0.7)
        give("carvedilol", dx["af"], 0.4)
        give("furosemide", dx["hf"], 0.85)
        give("carvedilol", dx["hf"], 0.6)
        give("lisinopril", dx["hf"], 0.5)
        give("sertraline", dx["dep"], 0.6)
        give("levothyroxine", dx["hypothy"], 0.9)
        give("omeprazole", dx["gerd"], 0.6)
        give("ferrous_sulfate", dx["anemia"], 0.5)
        idx = np.arange(n)
        # second-line agents a year or two later
        later = v.first_at_or_after(idx, self.dx_time["dm"] + 2 * YEAR)
        give("empagliflozin", later, 0.3)
        later = v.first_at_or_after(idx, self.dx_time["htn"] + YEAR)
        give("amlodipine", np.where(start["amlodipine"] == none, later, -1), 0.3)
        ckd_visit = dx["ckd"]
        no_acei = (start["lisinopril"] == none) | (start["lisinopril"] > ckd_visit)
        give("losartan", np.where(no_acei, ckd_visit, -1), 0.35)

        self.drug_t: dict[str, Arr] = {}
        refill_p = np.array([0.3, 0.6, 0.0])
        n_v = len(v)
        for drug, first in start.items():
            has = np.flatnonzero(first != none)
            code = ix(f"RxNorm/{tables().drugs[drug][0]}")
            self.ev.add(has, self.t_dx[first[has]], code, P_DRUG, visit=first[has])
            self.drug_t[drug] = self.t_dx[np.where(first != none, first, -1)]
            f = first[v.sub]
            rep = np.flatnonzero((f != none) & (np.arange(n_v) > f) & (rng.random(n_v) < refill_p[v.kind]))
            t = self.t_refill[rep]
            self.ev.add(v.sub[rep], t, code, P_DRUG, visit=rep)

    def on(self, drug: str, sub: Arr, t: Arr) -> Arr:
        return self.drug_t[drug][sub] <= t

    # labs and vitals ----------------------------------------------------------------------
    def latent(self) -> None:
        """Per-subject parameters of the lab trajectories."""
        rng, n = self.rng, self.n
        self.egfr0 = np.clip(127 - 0.75 * self.age0 + rng.normal(0, 12, n), 55, 150)
        self.ckd_target = rng.uniform(50, 59, n)
        self.ckd_lead = rng.uniform(1.0, 3.0, n) * YEAR
        self.ckd_start = rng.uniform(35, 59, n)
        self.ckd_slope = rng.uniform(0.5, 3.5, n)
        self.a1c0 = np.where(
            self.predm,
            rng.uniform(5.7, 6.3, n),
            np.clip(5.25 + 0.008 * (self.age0 - 50) + 0.015 * (self.bmi0 - 28) + rng.normal(0, 0.2, n), 4.4, 5.6),
        )
        self.dm_peak = rng.uniform(6.8, 9.8, n)
        self.dm_lead = rng.uniform(1.0, 3.0, n) * YEAR
        self.k0 = rng.normal(4.2, 0.18, n)
        self.na0 = rng.normal(140.0, 1.3, n)
        self.hgb0 = np.where(self.male, rng.normal(15.0, 0.9, n), rng.normal(13.6, 0.8, n))
        lowplt = rng.random(n) < 0.04
        self.plt0 = np.where(lowplt, rng.uniform(85, 145, n), np.clip(250 * np.exp(rng.normal(0, 0.2, n)), 150, 450))
        self.sbp0 = 117 + 0.25 * (self.age0 - 50) + 0.5 * (self.bmi0 - 28) + rng.normal(0, 8, n)
        self.hr0 = rng.normal(73, 7, n)
        self.af_pre = rng.random(n) < 0.5  # paroxysmal AF before diagnosis shows in heart rate

    def egfr(self, sub: Arr, t: Arr) -> Arr:
        base = self.egfr0[sub] - 0.8 * t / YEAR
        T = self.onset["ckd"][sub]
        lead = self.ckd_lead[sub]
        drop = np.maximum(self.egfr0[sub] - 0.8 * np.where(np.isfinite(T), T, 0) / YEAR - self.ckd_target[sub], 0)
        incident = base - drop * ramp(t, T - lead, lead)
        with np.errstate(invalid="ignore"):
            after = np.nan_to_num(np.maximum(t - np.maximum(T, 0), 0), posinf=0.0) / YEAR
        prevalent = self.ckd_start[sub] - self.ckd_slope[sub] * t / YEAR
        out = np.where(T <= 0, prevalent, incident - self.ckd_slope[sub] * after)
        return np.maximum(out, 5.0)

    def a1c(self, sub: Arr, t: Arr) -> Arr:
        base = self.a1c0[sub] + 0.015 * t / YEAR
        T = self.onset["dm"][sub]
        lead = self.dm_lead[sub]
        base_T = self.a1c0[sub] + 0.015 * np.where(np.isfinite(T), T, 0) / YEAR
        pre = base + np.maximum(6.6 - base_T, 0) * ramp(t, T - lead, lead)
        post = 6.6 + (self.dm_peak[sub] - 6.6) * ramp(t, T, 180.0)
        with np.errstate(invalid="ignore"):
            yrs = np.nan_to_num(np.maximum(t - np.maximum(T, 0), 0), posinf=0.0) / YEAR
        post = np.where(T <= 0, self.dm_peak[sub], post) + 0.1 * yrs
        post = post - 0.9 * self.on("metformin", sub, t) - 0.6 * self.on("empagliflozin", sub, t)
        return np.where(t >= T, np.maximum(post, 5.8), pre)

    def labs(self) -> None:
        rng, v, ev = self.rng, self.v, self.ev
        n_v = len(v)
        burden = self.burden(v.sub, v.start)
        p_draw = np.select([v.kind == OP, v.kind == ER], [np.clip(0.35 + 0.1 * burden, 0, 0.9), 0.7], 1.0)
        drawn = rng.random(n_v) < p_draw
        # inpatient stays get a draw on admission and each following morning (at most 10)
        n_draws = np.where(v.kind == IP, np.clip(np.ceil(v.end - v.start - HOUR), 1, 10), 1) * drawn
        d_vis, k = expand(n_draws.astype(np.int64))
        d_t = self.t_lab[d_vis] + k
        keep = d_t <= v.end[d_vis]
        d_vis, d_t, k = d_vis[keep], d_t[keep], k[keep]
        sub, kind, m = v.sub[d_vis], v.kind[d_vis], len(d_vis)
        admission = k == 0
        reason = v.reason[d_vis]
        age = self.age(sub, d_t)
        ip = (kind == IP).astype(float)

        dm_known = self.dx_time["dm"][sub] <= d_t
        bmp = np.where(kind == OP, rng.random(m) < 0.9, True)
        cbc = np.where(kind == OP, rng.random(m) < 0.5, np.where(admission, True, rng.random(m) < 0.6))
        p_a1c = np.where(dm_known, 0.5, np.where(age > 40, 0.08 + 0.1 * self.predm[sub], 0.02))
        a1c_on = admission & (kind != ER) & (rng.random(m) < np.where(kind == IP, 0.4 * dm_known, p_a1c))

        # kidney: latent eGFR -> creatinine (inverse MDRD), measured with noise, eGFR re-estimated
        female = ~self.male[sub]
        sexf = np.where(female, 0.742, 1.0)
        true_egfr = self.egfr(sub, d_t)
        scr: Arr = (true_egfr / (175.0 * age**-0.203 * sexf)) ** (-1 / 1.154)
        aki = reason == ix(icd_code("N17.9"))
        bump = np.where(aki, rng.uniform(1.5, 2.8, m) * np.exp(-k / 3.0) + (1 - np.exp(-k / 3.0)), 1.0)
        bump = bump * np.where(reason == ix(icd_code("E86.0")), 1.25, 1.0)
        scr = np.round(np.clip(scr * bump * np.exp(rng.normal(0, 0.05, m)), 0.3, 15.0), 2)
        egfr = np.round(175.0 * scr**-1.154 * age**-0.203 * sexf)
        acei = self.on("lisinopril", sub, d_t) | self.on("losartan", sub, d_t)
        loop, thz = self.on("furosemide", sub, d_t), self.on("hctz", sub, d_t)

        a1c_true = self.a1c(sub, d_t)
        a1c = np.round(np.clip(a1c_true + rng.normal(0, 0.15, m), 4.0, 15.0), 1)
        # ADAG average glucose from HbA1c; outpatient draws are mostly fasting, inpatient ones stressed
        setting: Arr = np.where(ip > 0, 1 + 0.15 * dm_known, 0.85)
        glucose: Arr = (28.7 * a1c_true - 46.7) * np.exp(rng.normal(0, 0.14, m)) * setting
        glucose = np.round(np.clip(glucose, 40, 600))

        ckd_k = 0.035 * np.maximum(60 - true_egfr, 0)
        potassium = self.k0[sub] + ckd_k + 0.25 * acei - 0.3 * loop - 0.2 * thz + 0.5 * aki
        potassium = np.round(np.clip(potassium + rng.normal(0, 0.28, m) + ip * rng.normal(0, 0.2, m), 2.5, 7.5), 1)
        hf_on = self.active("hf", sub, d_t) | (ramp(d_t, self.onset["hf"][sub] - 180, 180) > 0.5)
        sodium = self.na0[sub] - 3 * hf_on - 2 * thz - 1 * loop - 0.05 * np.maximum(age - 65, 0)
        sodium = sodium - 2.5 * (self.on("sertraline", sub, d_t) & (age > 65)) + 5 * (reason == ix(icd_code("E86.0")))
        sodium = np.round(np.clip(sodium + rng.normal(0, 1.8, m) + ip * rng.normal(-1, 2.5, m), 115, 160))

        t_an = self.onset["anemia"][sub]
        anemia = 2.5 * np.where(t_an <= 0, 1.0, ramp(d_t, t_an - 0.75 * YEAR, 0.75 * YEAR))
        anemia = anemia * (1 - 0.5 * self.on("ferrous_sulfate", sub, d_t))
        hgb = self.hgb0[sub] - 0.06 * np.maximum(60 - true_egfr, 0) - anemia - 0.02 * np.maximum(age - 60, 0)
        hgb = hgb - ip * (0.6 + 0.15 * k) - 3.0 * (reason == ix(icd_code("K92.2")))
        hgb = np.round(np.clip(hgb + rng.normal(0, 0.45, m), 4.0, 20.0), 1)
        plt = np.round(np.clip(self.plt0[sub] * np.exp(rng.normal(0, 0.07, m)) * (1 - 0.1 * ip), 5, 900))

        male = self.male[sub]
        lab_rows: list[tuple[str, Arr, Arr]] = [
            ("creatinine", bmp, scr),
            ("egfr", bmp, egfr),
            ("glucose", bmp, glucose),
            ("potassium", bmp, potassium),
            ("sodium", bmp, sodium),
            ("hemoglobin", cbc, hgb),
            ("platelets", cbc, plt),
            ("a1c", a1c_on, a1c),
        ]
        for key, mask, value in lab_rows:
            sel = np.flatnonzero(mask)
            lo = hi = None
            if key in tables().female_ranges:
                (lo_f, hi_f), (lo_m, hi_m) = tables().female_ranges[key], tables().male_ranges[key]
                lo, hi = np.where(male[sel], lo_m, lo_f), np.where(male[sel], hi_m, hi_f)
            code = ix(f"LOINC/{tables().labs[key][0]}")
            ev.add(sub[sel], d_t[sel], code, P_LAB, value=value[sel], visit=d_vis[sel], ref_low=lo, ref_high=hi)
        # lab orders on outpatient/ER draws and on admission
        order = admission | (kind != IP)
        for key, mask in (("cmp", bmp), ("cbc", cbc), ("a1c", a1c_on)):
            sel = np.flatnonzero(mask & order)
            ev.add(sub[sel], d_t[sel], ix(f"CPT4/{tables().procedures[key][0]}"), P_PROC, visit=d_vis[sel])
        self.counts["lab_draws"] = m

        # diagnoses driven by abnormal results, once per visit
        ckd_known = self.dx_time["ckd"][sub] <= d_t
        derived = (
            ("E87.5", bmp & (potassium >= 5.6), 0.6),
            ("E87.1", bmp & (sodium <= 130), 0.6),
            ("D69.6", cbc & (plt < 120), 0.4),
            ("R73.03", a1c_on & (a1c >= 5.7) & (a1c < 6.5) & ~dm_known, 0.4),
            ("N18.4", bmp & (egfr < 30) & ckd_known, 0.6),
            ("E11.65", bmp & (glucose > 250) & dm_known, 0.3),
        )
        for dx_code, mask, p in derived:
            vis = np.unique(d_vis[mask & (rng.random(m) < p)])
            ev.add(v.sub[vis], self.t_dx[vis], ix(icd_code(dx_code)), P_DX, visit=vis)

        # vitals at every OP/ER visit and with every inpatient draw
        self._vitals()

    def _vitals(self) -> None:
        rng, v, ev = self.rng, self.v, self.ev
        op_er = np.flatnonzero(v.kind != IP)
        ip_v = np.flatnonzero(v.kind == IP)
        n_ip = np.clip(np.ceil(v.end[ip_v] - v.start[ip_v] - HOUR), 1, 10).astype(np.int64)
        rep, k = expand(n_ip)
        ip_rep = ip_v[rep]
        vis = np.concatenate([op_er, ip_rep])
        t = np.concatenate([self.t_vital[op_er], np.maximum(self.t_lab[ip_rep] + k - 20 * MINUTE, v.start[ip_rep])])
        k = np.concatenate([np.zeros(len(op_er), np.int64), k])
        keep = t <= v.end[vis]
        vis, t, k = vis[keep], t[keep], k[keep]
        sub, m = v.sub[vis], len(vis)
        ip = (v.kind[vis] == IP).astype(float)

        hf_t = self.onset["hf"][sub]
        fluid = 3.0 * ramp(t, hf_t - 90, 90) * (1 - 0.7 * self.on("furosemide", sub, t))
        bmi_t = self.bmi0[sub] + self.bmi_trend[sub] * t / YEAR
        h2 = self.height[sub] ** 2
        weight = np.round(np.clip(bmi_t * h2 + fluid + rng.normal(0, 0.7, m), 35, 250), 1)
        bmi = np.round(weight / h2, 1)
        htn_t = self.onset["htn"][sub]
        htn = 16.0 * np.where(htn_t <= 0, 1.0, ramp(t, htn_t - YEAR, YEAR))
        drugs = sum(self.on(g, sub, t).astype(float) for g in ("lisinopril", "losartan", "amlodipine", "hctz"))
        drugs = drugs + 0.5 * self.on("carvedilol", sub, t)
        sbp = self.sbp0[sub] + 0.35 * t / YEAR + htn - 7 * drugs + rng.normal(0, 9, m) + ip * rng.normal(0, 10, m)
        sbp = np.round(np.clip(sbp, 80, 230))
        dbp = np.round(np.clip(0.45 * sbp + 22 + rng.normal(0, 6, m), 40, 130))
        af_t = self.onset["af"][sub]
        af_now = t >= af_t
        pre = (t >= af_t - YEAR) & ~af_now & self.af_pre[sub] & (rng.random(m) < 0.3)
        hr = self.hr0[sub] + 14 * af_now + 25 * pre - 8 * self.on("carvedilol", sub, t) + 6 * ip
        hr = np.round(np.clip(hr + rng.normal(0, 6, m) + af_now * rng.normal(0, 10, m), 35, 190))

        body = ((v.kind[vis] == OP) & (rng.random(m) < 0.9)) | ((v.kind[vis] == IP) & (k == 0))
        for key, mask, value in (
            ("weight", body, weight),
            ("bmi", body, bmi),
            ("sbp", None, sbp),
            ("dbp", None, dbp),
            ("hr", None, hr),
        ):
            sel = np.arange(m) if mask is None else np.flatnonzero(mask)
            ev.add(sub[sel], t[sel], ix(f"LOINC/{tables().labs[key][0]}"), P_VITAL, value=value[sel], visit=vis[sel])
        obese = np.flatnonzero(body & (bmi >= 30) & (v.kind[vis] == OP) & (rng.random(m) < 0.08))
        ev.add(sub[obese], self.t_dx[vis[obese]], ix(icd_code("E66.9")), P_DX, visit=vis[obese])

    def procedures(self) -> None:
        rng, v, ev = self.rng, self.v, self.ev
        n_v = len(v)
        cardiac = np.isin(v.reason, [ix(icd_code(c)) for c in ("R07.9", "R55", "I21.9", "I50.9", "I48.91")])
        p_ecg = np.select(
            [v.kind == IP, v.kind == ER],
            [0.5 + 0.4 * cardiac, 0.2 + 0.6 * cardiac],
            np.where(self.age(v.sub, v.start) > 50, 0.05, 0.02),
        )
        p_ecg = np.where(self.palpitations, 0.7, p_ecg)
        chest = np.isin(v.reason, [ix(icd_code(c)) for c in ("J18.9", "I50.9", "J44.1")])
        p_cxr = np.select([v.kind == IP, v.kind == ER], [0.2 + 0.7 * chest, 0.15 + 0.3 * cardiac], 0.01)
        vid = np.arange(n_v)
        for key, p in (("ecg", p_ecg), ("cxr", p_cxr)):
            sel = np.flatnonzero(rng.random(n_v) < p)
            ev.add(v.sub[sel], self.t_proc[sel], ix(f"CPT4/{tables().procedures[key][0]}"), P_PROC, visit=vid[sel])
        for cond, key, p_ in (("hf", "echo", 0.7), ("af", "echo", 0.4), ("copd", "spirometry", 0.6)):
            j = self.dx_visit[cond]
            sel = np.flatnonzero((j >= 0) & (rng.random(self.n) < p_))
            ev.add(sel, self.t_proc[j[sel]], ix(f"CPT4/{tables().procedures[key][0]}"), P_PROC, visit=j[sel])

    def run(self) -> pl.DataFrame:
        self.subjects()
        self.conditions()
        self.visits()
        self.latent()
        self.emit_statics()
        self.emit_visits()
        self.diagnoses()
        self.reasons_and_symptoms()
        self.drugs()
        self.labs()
        self.procedures()
        self.counts["deaths"] = int(np.isfinite(self.death).sum())
        return self.ev.frame(self.cfg.start, self.first_sid, self.first_vid)
