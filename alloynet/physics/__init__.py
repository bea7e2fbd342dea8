"""Physics of the rig: attenuation data, tube spectrum, alloys, the simulator and the ideal observer."""
from alloynet.physics.materials import ALLOYS, Alloy, Plate, get_alloy, register_alloy, sample_plate
from alloynet.physics.simulator import RigConfig, RigSimulator, SimulatedCapture
from alloynet.physics.spectrum import Spectrum, monochromatic, tube_spectrum
from alloynet.physics.transmission import neg_log_transmission, neg_log_transmission_of

ALLOY_NAMES = ("Al1050", "Al2017", "Al5083", "Al6082", "Al7075")

__all__ = [
    "ALLOYS", "ALLOY_NAMES", "Alloy", "Plate", "RigConfig", "RigSimulator", "SimulatedCapture", "Spectrum",
    "get_alloy", "monochromatic", "neg_log_transmission", "neg_log_transmission_of", "register_alloy",
    "sample_plate", "tube_spectrum",
]
