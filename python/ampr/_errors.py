"""
ampr._errors -- one exception class per ampr_status.

Every failing call raises a subclass of AmprError carrying the status number
(.status), its name without the AMPR_ERR_ prefix (.name, e.g. "KV_FULL"), the
library's static text (.text, from ampr_strerror) and the detailed message of
the failure (.message, from ampr_errmsg, read on the thread that failed).
A status this binding does not know (from a newer library) raises AmprError
itself.
"""


class AmprError(Exception):
    status = None  # set on every instance

    def __init__(self, status, name, message, text=""):
        self.status = int(status)
        self.name = name
        self.message = message
        self.text = text
        super().__init__("%s (%s)" % (message or text or name, name))


class InvalidArgError(AmprError): pass          # 1
class NomemError(AmprError): pass               # 2
class IoError(AmprError): pass                  # 3
class ConfigError(AmprError): pass              # 4
class ModelError(AmprError):
    """Base of the MODEL_* statuses: the checkpoint itself is unusable."""
class ModelFormatError(ModelError): pass        # 5
class ModelTruncatedError(ModelError): pass     # 6
class ModelBoundsError(ModelError): pass        # 7
class ModelShapeError(ModelError): pass         # 8
class ModelDtypeError(ModelError): pass         # 9
class ModelMissingError(ModelError): pass       # 10
class ModelHparamsError(ModelError): pass       # 11
class ModelNonfiniteError(ModelError): pass     # 12
class ModelVocabError(ModelError): pass         # 13
class UnsupportedError(AmprError): pass         # 14
class BadUtf8Error(AmprError): pass             # 15
class PromptEmptyError(AmprError): pass         # 16
class PromptTooLongError(AmprError): pass       # 17
class KvFullError(AmprError): pass              # 18
class CancelledError(AmprError): pass           # 19
class TierUnavailableError(AmprError): pass     # 20
class BackendError(AmprError): pass             # 21
class NoDeviceError(AmprError): pass            # 22
class BufferTooSmallError(AmprError): pass      # 23
class InternalError(AmprError): pass            # 24

BY_STATUS = {
    1: InvalidArgError, 2: NomemError, 3: IoError, 4: ConfigError,
    5: ModelFormatError, 6: ModelTruncatedError, 7: ModelBoundsError,
    8: ModelShapeError, 9: ModelDtypeError, 10: ModelMissingError,
    11: ModelHparamsError, 12: ModelNonfiniteError, 13: ModelVocabError,
    14: UnsupportedError, 15: BadUtf8Error, 16: PromptEmptyError,
    17: PromptTooLongError, 18: KvFullError, 19: CancelledError,
    20: TierUnavailableError, 21: BackendError, 22: NoDeviceError,
    23: BufferTooSmallError, 24: InternalError,
}


def make_error(lib, status, message):
    cls = BY_STATUS.get(int(status), AmprError)
    return cls(status, lib.status_name(status), message, lib.strerror(status))
