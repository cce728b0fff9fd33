"""The numbers every entry point falls back on, in one place.

A model file's own ``meta`` (calibrated threshold, floor, temperature) wins over these; these are what a
model without them, and a model being trained, uses.
"""

#: FOM threshold when a model carries no calibrated one
THRESHOLD = 0.5
#: permissive score floor: candidates under it are never decoded (``hydra pick --all`` writes all above it)
FLOOR = 0.05
#: logit temperature of an uncalibrated model
TEMPERATURE = 1.0
#: duplicate suppression distance as a fraction of the particle diameter
MIN_DISTANCE_DIAMETERS = 0.5
#: picks closer than this (a fraction of the particle diameter) to a border band or dead area are dropped
INVALID_MARGIN_DIAMETERS = 0.25
#: the network is asked about the rectangle inside a micrograph's border bands only (the bands are cropped
#: off before it is prepared), so that a band is to it what the micrograph's own edge is: particles beside
#: bands keep their scores, and the bands' pixels do not enter the normalisation (issue 14; README, Junk)
CROP_BANDS = True
#: micrograph evidence (issue 14, junk-only micrographs): every FOM of a micrograph is multiplied by
#: min(1, m / ref) ** EVIDENCE_POWER, m = the mean of its EVIDENCE_TOP_K highest FOMs, ref the FOM whose odds
#: are EVIDENCE_REFERENCE times the head's calibrated threshold's: a micrograph whose best candidates are weak
#: (no particles: ice, carbon, junk only) keeps its picks in order but at lower FOM. Chosen by
#: benchmarks/evidence_tune.py on simulated tuning sets only: the best junk-set AP that costs mixed-ice sets
#: (whose weak micrographs hold particles) at most 0.005 F1 (README, Junk). Junk-heavy sessions can ask for
#: more (hydra pick --evidence R)
EVIDENCE_TOP_K = 20
EVIDENCE_REFERENCE = 1.65
EVIDENCE_POWER = 1.0
#: precision that the calibrated threshold reaches on validation data
CALIBRATION_PRECISION = 0.8
#: few-shot label fraction (hydrapicker.finetune.estimate_label_fraction): the precision of the generic head's
#: detections at its calibrated threshold when a hit is a centre within D/2 of a particle, measured with the
#: default model on 32 random training-family sets (benchmarks/experiments/generic_precision.py: 0.920
#: pooled, 0.922 median per set; under the IoU rule 0.864): hits on labels over this = the labelled share
LABEL_FRACTION_NOMINAL_PRECISION = 0.92
#: training targets: a particle teaches every grid cell whose centre lies within this many strides of it
#: along both axes (0.5: the cell holding it only, the shipped models' rule; 0.7, tried for issue 18, also
#: teaches the neighbour cells near a border: better on crowded sets, worse on small/low-SNR ones, not shipped)
ASSIGN_REACH = 0.5
#: the reach of models whose metadata names none (trained before issue 18: the cell holding the centre only)
ASSIGN_REACH_OWN_CELL = 0.5
#: test-time augmentation: the network is averaged over this many dihedral views of each micrograph (1: the
#: micrograph as stored; 2: and turned by 180 degrees; 4, 8: quarter turns and flips too). 2 since issue 14:
#: every junk target's AP gap to clean micrographs <= 0.05 (one view: up to 0.055) for 1.21x the CPU time of
#: one view per 4096^2 micrograph (benchmarks/junk.py --tta, benchmarks/speed.py --tta; README, Junk)
TTA = 2
#: the head also reads the grid shifted by half a cell (its cells centred on the grid's cell corners; one more
#: pass of the head per view, on the body features it already has) and both grids' candidates are ranked
#: together (issue 18): a particle near the border of one grid's cells sits near the centre of one of the
#: other's, whose offsets were trained for it. Off by default (hydra pick --half-cell): AP rises on the
#: tuning sets (+0.011 clean, +0.007 junk) and on 10 of 12 centre sets (t_micelle +0.041, t_rod +0.037), but
#: the max of two grids' scores also lifts noise, so particle-free micrographs get about twice the picks at
#: the calibrated threshold, and t_virus, c_small60kda_lowsnr and junk j_dumbbell_pp lose 0.02-0.03
#: (README, Centres)
HALF_CELL_GRID = False
#: re-centre every pick with the shipped centre refiner unless asked otherwise (hydra pick --refine /
#: --no-refine, RELION refine_centres, CryoSPARC --refine / --no-refine). Off: it raises AP on the simulated
#: targets (+0.015 mean, up to +0.06) but lowers it on real apoferritin (0.910 -> 0.892) and costs AP_D/2
#: on two-domain and micelle targets (README, Centres)
REFINE_CENTRES = False
#: after centre refinement, picks closer than this fraction of the diameter (or the policy's minimum
#: distance, when smaller) sit on one particle: the lower FOM one goes (issue 18: measured against D/2 and
#: none, benchmarks/centres.py)
REFINED_MIN_DISTANCE_DIAMETERS = 0.25

#: training recipe (``hydra train --small-fraction``): the share of the globular, multidomain and flat
#: source datasets that hold a small protein (50-90 A, 50-150 kDa); the shipped models' value
SMALL_FRACTION = 0.15
