//go:build linux

package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"strings"
)

// A 3x5 pixel font, enough for the chart's labels (drawn upper-case). Each
// glyph is 5 rows of 3 columns, '#' set.
var font = map[rune]string{
	'A': ".#.#.#####.##.#", 'B': "##.#.###.#.###.", 'C': ".###..#..#...##", 'D': "##.#.##.##.###.",
	'E': "####..####..###", 'F': "####..##.#..#..", 'G': ".###..#.##.#.##", 'H': "#.##.#####.##.#",
	'I': "###.#..#..#.###", 'J': "..#..#..##.#.#.", 'K': "#.##.###.#.##.#", 'L': "#..#..#..#..###",
	'M': "#.########.##.#", 'N': "##.#.##.##.##.#", 'O': ".#.#.##.##.#.#.", 'P': "##.#.###.#..#..",
	'Q': ".#.#.##.####.##", 'R': "##.#.###.#.##.#", 'S': ".###...#...###.", 'T': "###.#..#..#..#.",
	'U': "#.##.##.##.####", 'V': "#.##.##.##.#.#.", 'W': "#.##.########.#", 'X': "#.##.#.#.#.##.#",
	'Y': "#.##.#.#..#..#.", 'Z': "###..#.#.#..###", '0': "####.##.##.####", '1': ".#.##..#..#.###",
	'2': "##...#.#.#..###", '3': "##...#.#...###.", '4': "#.##.####..#..#", '5': "####..##...###.",
	'6': ".###..####.####", '7': "###..#.#..#..#.", '8': "####.#####.####", '9': "####.####..###.",
	'.': ".............#.", '-': "......###......", '/': "..#..#.#.#..#..", ':': "....#.....#....",
	'(': ".#.#..#..#...#.", ')': ".#...#..#..#.#.", '+': "....#.###.#....", ' ': "...............",
	'%': "#.#..#.#.#..#.#", '=': "...###...###...", '_': "............###", ',': "..........#.#..",
}

func drawText(img *image.RGBA, x, y, scale int, s string, c color.Color) {
	for _, r := range strings.ToUpper(s) {
		g, ok := font[r]
		if !ok {
			g = font['_']
		}
		g = (g + "...............")[:15] // tolerate short glyph strings
		for i, p := range g {
			if p == '#' {
				px, py := x+(i%3)*scale, y+(i/3)*scale
				draw.Draw(img, image.Rect(px, py, px+scale, py+scale), image.NewUniform(c), image.Point{}, draw.Src)
			}
		}
		x += 4 * scale
	}
}

var palette = []color.RGBA{
	{0x55, 0x55, 0x55, 255}, {0x1f, 0x77, 0xb4, 255}, {0xd6, 0x27, 0x28, 255},
	{0x2c, 0xa0, 0x2c, 255}, {0xff, 0x7f, 0x0e, 255}, {0x94, 0x67, 0xbd, 255}, {0x8c, 0x56, 0x4b, 255},
}

// writeChart draws, per table, one panel per figure with a bar per system,
// and a color legend naming the systems.
func writeChart(path string, tables []table, streams int) error {
	type metric struct {
		name string
		get  func(row) float64
	}
	of := func(get func(result) float64) func(row) float64 {
		return func(rw row) float64 { return get(rw.r) }
	}
	metrics := []metric{
		{"1 stream down MiB/s", of(func(r result) float64 { return r.down1 })},
		{fmt.Sprintf("%d streams down MiB/s", streams), of(func(r result) float64 { return r.down8 })},
		{"1 stream up MiB/s", of(func(r result) float64 { return r.up1 })},
		{"TTFB p50 ms", of(func(r result) float64 { return r.ttfb50 })},
		{"cold start ms", of(func(r result) float64 { return r.cold })},
		{"CPU s/GiB total", of(cpuTotal)},
		{"idle RSS MiB cli+srv", func(rw row) float64 {
			if rw.idle == nil || rw.idle.err != nil || (rw.idle.hwmCli < 0 && rw.idle.hwmSrv < 0) {
				return -1
			}
			return max(rw.idle.hwmCli, 0) + max(rw.idle.hwmSrv, 0)
		}},
	}
	const (
		scale  = 2
		panelW = 220
		panelH = 200
		margin = 20
		legend = 16
	)
	maxRows := 0
	for _, t := range tables {
		maxRows = max(maxRows, len(t.rows))
	}
	blockH := 30 + panelH + 40
	W := margin*2 + len(metrics)*panelW
	H := margin + len(tables)*blockH + maxRows*legend + margin
	img := image.NewRGBA(image.Rect(0, 0, W, H))
	draw.Draw(img, img.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	black := color.Black
	y0 := margin
	for _, t := range tables {
		title := t.title
		if len(title) > 100 {
			title = title[:100]
		}
		drawText(img, margin, y0, scale, title, black)
		for mi, m := range metrics {
			px := margin + mi*panelW
			py := y0 + 30
			drawText(img, px, py, scale, m.name, black)
			top := 0.0
			for _, rw := range t.rows {
				if rw.err == nil {
					top = max(top, m.get(rw))
				}
			}
			base := py + panelH
			draw.Draw(img, image.Rect(px, base, px+panelW-20, base+1), image.NewUniform(black), image.Point{}, draw.Src)
			if top <= 0 {
				continue
			}
			bw := (panelW - 30) / max(len(t.rows), 1)
			for i, rw := range t.rows {
				v := -1.0
				if rw.err == nil {
					v = m.get(rw)
				}
				if v < 0 {
					continue
				}
				h := int(v / top * float64(panelH-40))
				x := px + i*bw
				draw.Draw(img, image.Rect(x+2, base-h, x+bw-2, base), image.NewUniform(palette[i%len(palette)]), image.Point{}, draw.Src)
				label := fmt.Sprintf("%.0f", v)
				if v < 10 {
					label = fmt.Sprintf("%.1f", v)
				}
				drawText(img, x+2, base-h-12, 1, label, black)
			}
		}
		y0 += blockH
	}
	// One legend: the systems are in the same order in every table, but a
	// skipped system shifts colors, so the legend follows the first table.
	if len(tables) > 0 {
		for i, rw := range tables[0].rows {
			y := y0 + i*legend
			draw.Draw(img, image.Rect(margin, y, margin+10, y+10), image.NewUniform(palette[i%len(palette)]), image.Point{}, draw.Src)
			drawText(img, margin+16, y, scale, rw.name, black)
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
