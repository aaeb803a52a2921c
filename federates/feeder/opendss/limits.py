"""The limits index: where each Line, Transformer and three-phase bus sits in OpenDSS's
bulk arrays, and the loadings, flows and unbalance computed from them.

Owns :class:`LimitsIndex` (built once per model, again after customers are attached)
and the per-solution arithmetic of the limit checks: Line loading (current over
NormAmps), Transformer loading (|S| over kVA), active flow into terminal 1, and the
voltage unbalance factor (:func:`fortescue_vuf_pct`). The adapter hands it the bulk
arrays of a solution; nothing here solves or reads a solution itself.
"""

from __future__ import annotations

import math

import numpy as np

from federates.common.errors import FeederModelError

__all__ = ["LimitsIndex", "fortescue_vuf_pct"]

#: Fortescue operator a = exp(j 2 pi / 3)
_A = complex(math.cos(2 * math.pi / 3), math.sin(2 * math.pi / 3))


def fortescue_vuf_pct(v_abc: np.ndarray) -> np.ndarray:
    """Voltage unbalance factor |V2| / |V1| x 100 [%] of phasors ``v_abc`` (..., 3).

    The "true" VUF of IEC 61000-4-30 (Sec. 5.7, supply voltage unbalance) and IEEE
    1159 (voltage unbalance as the ratio of the negative- to the positive-sequence
    component): V1 = (Va + a Vb + a^2 Vc) / 3, V2 = (Va + a^2 Vb + a Vc) / 3 with the
    Fortescue operator a = exp(j 2 pi / 3), phases a, b, c = last axis. Phase-to-
    neutral phasors give the same V1, V2 as line-to-line ones up to a common factor
    (zero sequence drops out), so the ratio is the standard's. NaN where V1 = 0.
    """
    v = np.asarray(v_abc, dtype=complex)
    if v.shape[-1] != 3:
        raise ValueError(f"expected phasors with a last axis of 3 (a, b, c), got shape {v.shape}")
    a, a2 = _A, _A * _A
    v1 = np.abs(v[..., 0] + a * v[..., 1] + a2 * v[..., 2])
    v2 = np.abs(v[..., 0] + a2 * v[..., 1] + a * v[..., 2])
    ok = v1 > 0  # no division by 0 (and no errstate: its context costs more than this)
    return np.where(ok, v2 / np.where(ok, v1, 1.0) * 100.0, np.nan)


class LimitsIndex:
    """Where each Line, Transformer and three-phase bus sits in OpenDSS's bulk arrays."""

    def __init__(self) -> None:
        self.n_pd = 0
        self.n_cond_total = 0
        self.line_names: list[str] = []
        self.line_pos = np.zeros(0, dtype=np.int64)
        self.line_norm_amps = np.zeros(0)
        self.line_idx = np.zeros(0, dtype=np.int64)  # flat conductor positions, terminal 1
        self.line_grp = np.zeros(0, dtype=np.int64)  # line of each position
        self.xf_names: list[str] = []
        self.xf_idx = np.zeros(0, dtype=np.int64)  # flat conductor positions, terminal 1
        self.xf_grp = np.zeros(0, dtype=np.int64)  # transformer of each position
        self.xf_kva = np.zeros(0)
        self.n_nodes = 0
        self.bus3_names: list[str] = []
        self.bus3_nodes = np.zeros((0, 3), dtype=np.int64)
        self.element_names: list[str] = []  # line.<name>..., then transformer.<name>...

    @classmethod
    def build(cls, dss) -> LimitsIndex:
        """The index of the circuit of OpenDSS context ``dss`` as it is now."""
        ix = cls()
        pd_el = dss.PDElements
        names = [n.lower() for n in pd_el.AllNames()]
        n_cond = np.asarray(pd_el.AllNumConductors(), dtype=np.int64)
        n_term = np.asarray(pd_el.AllNumTerminals(), dtype=np.int64)
        ix.n_pd = len(names)
        ix.n_cond_total = int(np.sum(n_cond * n_term))
        offset = np.concatenate([[0], np.cumsum(n_cond * n_term)[:-1]]).astype(np.int64)
        line_pos, norm, xf_pos = [], [], []
        for k, full in enumerate(names):
            cls_name, _, name = full.partition(".")
            if cls_name == "line":
                dss.Lines.Name(name)
                line_pos.append(k)
                norm.append(float(dss.Lines.NormAmps()))
                ix.line_names.append(name)
            elif cls_name == "transformer":
                dss.Transformers.Name(name)
                dss.Transformers.Wdg(1)
                xf_pos.append(k)
                ix.xf_kva = np.append(ix.xf_kva, float(dss.Transformers.kVA()))
                ix.xf_names.append(name)
        ix.line_pos = np.asarray(line_pos, dtype=np.int64)
        lpos = [np.arange(offset[k], offset[k] + n_cond[k]) for k in line_pos]
        ix.line_idx = np.concatenate(lpos).astype(np.int64) if lpos else np.zeros(0, dtype=np.int64)
        ix.line_grp = np.repeat(np.arange(len(line_pos)), [len(p) for p in lpos]).astype(np.int64)
        na = np.asarray(norm, dtype=float)
        ix.line_norm_amps = np.where(na > 0, na, np.nan)
        ix.xf_kva = np.where(ix.xf_kva > 0, ix.xf_kva, np.nan)
        # terminal 1 of transformer j: flat positions offset[k] .. offset[k] + n_cond[k]
        pos = [np.arange(offset[k], offset[k] + n_cond[k]) for k in xf_pos]
        ix.xf_idx = np.concatenate(pos).astype(np.int64) if pos else np.zeros(0, dtype=np.int64)
        ix.xf_grp = np.repeat(np.arange(len(xf_pos)), [len(p) for p in pos]).astype(np.int64)
        node_names = [n.lower() for n in dss.Circuit.AllNodeNames()]
        ix.n_nodes = len(node_names)
        where = {n: i for i, n in enumerate(node_names)}
        rows = []
        for bus in dss.Circuit.AllBusNames():
            b = bus.lower()
            idx = [where.get(f"{b}.{k}") for k in (1, 2, 3)]
            if all(i is not None for i in idx):
                ix.bus3_names.append(b)
                rows.append(idx)
        ix.bus3_nodes = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        ix.element_names = [f"line.{x}" for x in ix.line_names] + [f"transformer.{x}" for x in ix.xf_names]
        ix._pack_fast()
        return ix

    def _pack_fast(self) -> None:
        """The index arrays of the one-call readouts (:meth:`loading_pct`, :meth:`flows_kw`,
        :meth:`vuf_values_pct`), from the ones above: positions in the float view of the
        complex ``PDElements.AllPowers`` (re at 2i, im at 2i + 1) and bincount groups
        that keep each sum's terms in the order of the per-kind methods."""
        m, nl = len(self.xf_names), len(self.line_names)
        self._xf_idx2 = np.stack([2 * self.xf_idx, 2 * self.xf_idx + 1], axis=1).reshape(-1)
        self._xf_grp2 = np.stack([2 * self.xf_grp, 2 * self.xf_grp + 1], axis=1).reshape(-1)
        self._xf_m2 = 2 * m
        self._p_idx = 2 * np.concatenate([self.line_idx, self.xf_idx]).astype(np.int64)
        self._p_grp = np.concatenate([self.line_grp, self.xf_grp + nl]).astype(np.int64)
        self._n_el = nl + m
        self._bus3 = [np.ascontiguousarray(self.bus3_nodes[:, k]) for k in range(3)]

    def check(self, n_elements: int) -> None:
        if n_elements != self.n_pd:
            raise FeederModelError("the PD element list changed; call attach_customers only")

    def check_powers(self, n_values: int) -> None:
        if n_values != self.n_cond_total:
            raise FeederModelError("the PD element list changed; call attach_customers only")

    def line_loading_pct(self, max_currents: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Every Line's loading [%] from ``PDElements.AllMaxCurrents`` (terminal 1) [A]."""
        self.check(len(max_currents))
        return list(self.line_names), max_currents[self.line_pos] / self.line_norm_amps * 100.0

    def transformer_loading_pct(self, powers: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Every Transformer's loading [%] from ``PDElements.AllPowers`` [kW + j kvar]."""
        self.check_powers(len(powers))
        st = powers[self.xf_idx]
        m = len(self.xf_names)
        p = np.bincount(self.xf_grp, weights=st.real, minlength=m)
        q = np.bincount(self.xf_grp, weights=st.imag, minlength=m)
        return list(self.xf_names), np.hypot(p, q) / self.xf_kva * 100.0

    def element_p_kw(self, powers: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Active power into terminal 1 of every Line, then every Transformer [kW], from
        ``PDElements.AllPowers`` [kW + j kvar]."""
        self.check_powers(len(powers))
        p_line = np.bincount(self.line_grp, weights=powers.real[self.line_idx], minlength=len(self.line_names))
        p_xf = np.bincount(self.xf_grp, weights=powers.real[self.xf_idx], minlength=len(self.xf_names))
        return list(self.element_names), np.concatenate([p_line, p_xf])

    def loading_pct(self, max_currents: np.ndarray, powers: np.ndarray) -> np.ndarray:
        """:meth:`line_loading_pct` then :meth:`transformer_loading_pct` as one vector [%]
        (the names are :attr:`element_names`), bit for bit, in fewer numpy calls: the
        transformers' active and reactive sums in one bincount over the float view of
        ``powers`` (each bin adds the same terms in the same order)."""
        self.check(len(max_currents))
        self.check_powers(len(powers))
        nl = len(self.line_names)
        out = np.empty(nl + len(self.xf_names))
        np.divide(max_currents[self.line_pos], self.line_norm_amps, out=out[:nl])
        out[:nl] *= 100.0
        pq = np.bincount(self._xf_grp2, weights=powers.view(float)[self._xf_idx2], minlength=self._xf_m2)
        xf = out[nl:]
        np.hypot(pq[0::2], pq[1::2], out=xf)
        xf /= self.xf_kva
        xf *= 100.0
        return out

    def loading_pct_many(self, max_currents: np.ndarray, powers: np.ndarray) -> np.ndarray:
        """:meth:`loading_pct` of ``T`` solutions at once (T, elements) [%], from their
        ``max_currents`` (T, PD elements) and complex ``powers`` (T, PD conductor values);
        each row bit for bit as alone (the bincount's bins offset per row, each adding
        the same terms in the same order)."""
        n_t = max_currents.shape[0]
        self.check(max_currents.shape[1])
        self.check_powers(powers.shape[1])
        nl, m2 = len(self.line_names), self._xf_m2
        out = np.empty((n_t, nl + len(self.xf_names)))
        np.divide(max_currents[:, self.line_pos], self.line_norm_amps, out=out[:, :nl])
        out[:, :nl] *= 100.0
        bins = (self._xf_grp2[None, :] + np.arange(n_t)[:, None] * m2).reshape(-1)
        weights = np.ascontiguousarray(powers).view(float)[:, self._xf_idx2].reshape(-1)
        pq = np.bincount(bins, weights=weights, minlength=n_t * m2).reshape(n_t, m2)
        xf = out[:, nl:]
        np.hypot(pq[:, 0::2], pq[:, 1::2], out=xf)
        xf /= self.xf_kva
        xf *= 100.0
        return out

    def vuf_values_pct_many(self, volts: np.ndarray, where: object) -> np.ndarray:
        """:meth:`vuf_values_pct` of ``T`` solutions at once (T, buses) [%] from their
        complex ``volts`` (T, nodes); each row bit for bit as alone (elementwise)."""
        if volts.shape[1] != self.n_nodes:
            raise FeederModelError(f"{where}: the node list changed; call attach_customers only")
        va, vb, vc = (volts[:, k] for k in self._bus3)
        a, a2 = _A, _A * _A
        v1 = np.abs(va + a * vb + a2 * vc)
        v2 = np.abs(va + a2 * vb + a * vc)
        ok = v1 > 0
        if ok.all():
            v2 /= v1
            v2 *= 100.0
            return v2
        return np.where(ok, v2 / np.where(ok, v1, 1.0) * 100.0, np.nan)

    @property
    def snapshot_values(self) -> int:
        """Floats of one solution's limit snapshot (max currents, complex powers and
        volts): the feeder role sizes its batches by it."""
        return self.n_pd + 2 * self.n_cond_total + 2 * self.n_nodes

    def flows_kw(self, powers: np.ndarray) -> np.ndarray:
        """:meth:`element_p_kw` without the names, bit for bit (one bincount)."""
        self.check_powers(len(powers))
        return np.bincount(self._p_grp, weights=powers.view(float)[self._p_idx], minlength=self._n_el)

    def vuf_values_pct(self, volts: np.ndarray, where: object) -> np.ndarray:
        """:meth:`vuf_pct` without the names, bit for bit: the Fortescue sums of
        :func:`fortescue_vuf_pct` on the three phase columns taken apart."""
        if len(volts) != self.n_nodes:
            raise FeederModelError(f"{where}: the node list changed; call attach_customers only")
        va, vb, vc = (volts[k] for k in self._bus3)
        a, a2 = _A, _A * _A
        v1 = np.abs(va + a * vb + a2 * vc)
        v2 = np.abs(va + a2 * vb + a * vc)
        ok = v1 > 0
        if ok.all():  # what fortescue_vuf_pct's where() gives when no V1 is 0
            v2 /= v1
            v2 *= 100.0
            return v2
        return np.where(ok, v2 / np.where(ok, v1, 1.0) * 100.0, np.nan)

    def vuf_pct(self, volts: np.ndarray, where: object) -> tuple[list[str], np.ndarray]:
        """VUF of every bus with nodes 1, 2 and 3 [%] from ``Circuit.AllBusVolts`` [V]."""
        if len(volts) != self.n_nodes:
            raise FeederModelError(f"{where}: the node list changed; call attach_customers only")
        return list(self.bus3_names), fortescue_vuf_pct(volts[self.bus3_nodes])
