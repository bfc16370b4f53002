# SPDX-License-Identifier: Apache-2.0
"""NBD protocol constants (NetworkBlockDevice/nbd ``doc/proto.md``), shared by the server
(:mod:`.nbd`) and the client (:mod:`.nbdclient`)."""

from __future__ import annotations

import struct

from ..units import MiB

# The NBD de-facto hard limit on one request (qemu's NBD_MAX_BUFFER_SIZE).
MAX_REQUEST = 32 * MiB
# Unix socket paths are limited to 108 bytes including the NUL (sun_path).
MAX_SOCK_PATH = 107

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCTURED_MAGIC = 0x668E33EF
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
# Transmission flags: HAS_FLAGS | READ_ONLY | SEND_FLUSH | CAN_MULTI_CONN (a read-only export
# is trivially consistent across connections).
EXPORT_FLAGS = 1 | 2 | 4 | 256
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 8, 9, 10
REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP, REP_ERR_INVALID, REP_ERR_UNKNOWN = 2**31 + 1, 2**31 + 3, 2**31 + 6
INFO_EXPORT, INFO_BLOCK_SIZE = 0, 3
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 0, 1, 2, 3, 4, 6, 7
CMD_FLAG_FUA, CMD_FLAG_DF, CMD_FLAG_REQ_ONE = 1, 4, 8
REPLY_FLAG_DONE = 1
REPLY_NONE, REPLY_OFFSET_DATA, REPLY_OFFSET_HOLE, REPLY_BLOCK_STATUS = 0, 1, 2, 5
REPLY_ERROR, REPLY_ERROR_OFFSET = 2**15 + 1, 2**15 + 2
STATE_HOLE, STATE_ZERO = 1, 2
EPERM, EIO, EINVAL = 1, 5, 22
BASE_ALLOCATION = b"base:allocation"
BASE_ALLOCATION_ID = 1


REQUEST = struct.Struct(">IHHQQI")  # magic, flags, command, handle, offset, length
