// Line charts of polled values, drawn by uPlot (vendored, a global from
// its IIFE build). x is wall time in Unix seconds.

import { h } from './dom.js';

export const palette = ['#1f6feb', '#d9480f', '#2f9e44', '#9c36b5', '#e8590c', '#0c8599'];

// lineChart adds a chart to parent. series: [{label, color}]; fmt formats
// y values (axis and legend).
export function lineChart(parent, { title, series, fmt = v => String(v), height = 170, yRange, ySize = 70 }) {
  const el = h('div', { class: 'chart' });
  parent.append(el);
  const width = () => Math.max(200, Math.floor(el.clientWidth || parent.clientWidth || 400));
  const opts = {
    title,
    width: width(),
    height,
    cursor: { drag: { x: false, y: false } },
    legend: { live: true },
    scales: { x: { time: true }, y: yRange ? { range: yRange } : {} },
    series: [
      { label: 'time', value: (u, v) => (v == null ? '—' : new Date(v * 1000).toLocaleTimeString()) },
      ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color || palette[i % palette.length],
        width: 1.5,
        spanGaps: false,
        points: { show: false },
        value: (u, v) => (v == null ? '—' : fmt(v)),
      })),
    ],
    axes: [
      { stroke: '#667', grid: { stroke: '#eef' } },
      { stroke: '#667', grid: { stroke: '#eef' }, size: ySize, values: (u, vals) => vals.map(v => (v == null ? '' : fmt(v))) },
    ],
  };
  const empty = [[], ...series.map(() => [])];
  const plot = new uPlot(opts, empty, el);
  const ro = new ResizeObserver(() => {
    const w = width();
    if (w !== plot.width) plot.setSize({ width: w, height });
  });
  ro.observe(el);
  return {
    el,
    set(data) { plot.setData(data); },
    destroy() { ro.disconnect(); plot.destroy(); },
  };
}
