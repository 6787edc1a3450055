import Foundation

/// Half a cosine from a base step size down towards 0 (Loshchilov & Hutter's annealing
/// without restarts): step k of n gets base · ½(1 + cos(πk/n)), so the first step takes
/// the base and the last a small positive size. Computed in F64 and rounded once to F32:
/// by the coordinator where it hands out one step per task (training, sequential block
/// re-fit), by the worker where one task takes every step (dense block re-fit); hosts
/// with the same libm get the same bits either way, as they must for `MaskedAdam`'s `powf`.
public enum CosineSchedule {
    /// The step size of step `step` (0-based) of `steps`.
    public static func stepSize(base: Double, step: Int, of steps: Int) -> Float {
        precondition(steps > 0 && step >= 0 && step < steps, "step \(step) of \(steps)")
        return Float(base * 0.5 * (1 + cos(Double.pi * Double(step) / Double(steps))))
    }
}
