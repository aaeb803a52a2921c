"""Names of the federation's HELICS interfaces, in one place.

Values (physical quantities, vectors in customer order, with units):
``market/schedule_p_kw``, ``prosumers/deviation_p_kw``, ``feeder/v_pu``,
``feeder/p_kw``, ``feeder/q_kvar``, ``feeder/curtailed_p_kw``.
Endpoints (messages): one per federate, named after it.
"""

SCHEDULE_P_KW = ("market/schedule_p_kw", "kW")
DEVIATION_P_KW = ("prosumers/deviation_p_kw", "kW")
FEEDER_V_PU = ("feeder/v_pu", "pu")
FEEDER_P_KW = ("feeder/p_kw", "kW")
FEEDER_Q_KVAR = ("feeder/q_kvar", "kvar")
FEEDER_CURTAILED_P_KW = ("feeder/curtailed_p_kw", "kW")
#: the DSO's SCADA view after each solve: source P, element loading and flow, bus VUF
#: (federates.feeder.role.Scada.to_vector; units differ by position, so none here)
FEEDER_SCADA = ("feeder/scada", "")

MARKET, PROSUMERS, FEEDER, METERS, CONTROLLERS = "market", "prosumers", "feeder", "meters", "controllers"
FEDERATES = (PROSUMERS, MARKET, FEEDER, METERS, CONTROLLERS)

