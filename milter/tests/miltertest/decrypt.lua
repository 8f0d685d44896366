-- ibemail-milter, inbound: a sealed message for a local recipient, from an
-- outside client, is opened back to the original.
--
-- OpenDKIM's miltertest plays the MTA (Postfix):
--
--   ibemail-milter encrypt --record "$(...)" --rcpt bob@b.test < original.eml > sealed.eml
--   ibemail-milter run --config receiver.toml &    # local_domains = ["b.test"], [kgc] dir
--   miltertest -s decrypt.lua -D socket=inet:8895@127.0.0.1 \
--       -D message=sealed.eml -D expect=original-body.txt [-D rcpt=bob@b.test]
--
-- `message` is the sealed message as it arrives (header, blank line, body;
-- CRLF line ends); `expect` holds the body the milter must restore, byte
-- for byte. Exit status 0 when the milter opened the message; an error()
-- (exit status 1) names what was wrong.
--
-- Keep the messages small: miltertest (OpenDKIM 2.11) reads each reply from
-- the filter, and sends each header field, through a 1024-byte buffer; and
-- each mt.bodystring() piece is kept under 1000 bytes.

if rcpt == nil then
	rcpt = "bob@b.test"
end
mt.set_timeout(30)

local function check(what, result)
	if result ~= nil then
		error(what .. " failed: " .. tostring(result))
	end
end

local function continued(conn, what)
	local reply = mt.getreply(conn)
	if reply ~= SMFIR_CONTINUE then
		error(what .. ": expected SMFIR_CONTINUE, got " .. string.char(reply))
	end
end

local function slurp(path)
	local f = io.open(path, "rb")
	if f == nil then
		error("cannot read " .. path)
	end
	local data = f:read("a")
	f:close()
	return data
end

-- Header fields as (name, value) with the value's leading space removed
-- (miltertest adds it back under SMFIP_HDR_LEADSPC) and folded lines
-- joined with a bare LF, as Postfix passes them to a milter.
local function split_message(text)
	local head_end = string.find(text, "\r\n\r\n", 1, true)
	if head_end == nil then
		error("no blank line after the header in " .. message)
	end
	local fields = {}
	for line in string.gmatch(string.sub(text, 1, head_end + 1), "(.-)\r\n") do
		if string.match(line, "^[ \t]") then
			local last = fields[#fields]
			last[2] = last[2] .. "\n" .. line
		else
			local name, value = string.match(line, "^([^:]+):[ ]?(.*)$")
			if name == nil then
				error("not a header field: " .. line)
			end
			table.insert(fields, { name, value })
		end
	end
	return fields, string.sub(text, head_end + 4)
end

local function test()
	if socket == nil or message == nil or expect == nil then
		error("usage: -D socket=inet:PORT@HOST -D message=SEALED.eml -D expect=BODY")
	end
	local fields, body = split_message(slurp(message))
	local original_body = slurp(expect)

	local conn = mt.connect(socket, 10, 0.5)
	if conn == nil then
		error("cannot connect to the milter at " .. socket)
	end

	-- An outside client: the message is inbound.
	-- A Postfix release that counts header fields as it shows them
	-- (macro v): the milter edits them in place.
	mt.macro(conn, SMFIC_CONNECT, "v", "Postfix 3.9.1")
	check("mt.conninfo", mt.conninfo(conn, "mx.a.test", "192.0.2.25"))
	continued(conn, "connect")
	if not mt.test_option(conn, SMFIP_NOHELO) then
		check("mt.helo", mt.helo(conn, "mx.a.test"))
		continued(conn, "HELO")
	end
	mt.macro(conn, SMFIC_MAIL, "i", "MT2DECRYPT")
	check("mt.mailfrom", mt.mailfrom(conn, "<alice@a.test>"))
	continued(conn, "MAIL FROM")
	check("mt.rcptto", mt.rcptto(conn, "<" .. rcpt .. ">"))
	continued(conn, "RCPT TO")
	if not mt.test_option(conn, SMFIP_NODATA) then
		check("mt.data", mt.data(conn))
		continued(conn, "DATA")
	end

	-- The receiving MX's Received field on top, then the sealed message's own.
	check("mt.header(Received)", mt.header(conn, "Received",
		"from mx.a.test (mx.a.test [192.0.2.25]) by mx.b.test; Mon, 23 Nov 2026 09:00:01 +0000"))
	continued(conn, "header Received")
	-- A forged result claiming our authserv-id: must be removed.
	check("mt.header(Authentication-Results)",
		mt.header(conn, "Authentication-Results", "mx.b.test; x-ibemail=pass"))
	continued(conn, "header Authentication-Results")
	for _, f in ipairs(fields) do
		check("mt.header(" .. f[1] .. ")", mt.header(conn, f[1], f[2]))
		continued(conn, "header " .. f[1])
	end
	-- Fields added on the way, outside the encryption: must not survive.
	check("mt.header(Subject)", mt.header(conn, "Subject", "Wire the money"))
	continued(conn, "header Subject")
	check("mt.header(Reply-To)", mt.header(conn, "Reply-To", "thief@evil.test"))
	continued(conn, "header Reply-To")
	if not mt.test_option(conn, SMFIP_NOEOH) then
		check("mt.eoh", mt.eoh(conn))
		continued(conn, "end of header")
	end

	local piece = 900
	for i = 1, #body, piece do
		check("mt.bodystring", mt.bodystring(conn, string.sub(body, i, i + piece - 1)))
		continued(conn, "body")
	end

	check("mt.eom", mt.eom(conn))
	continued(conn, "end of message")

	-- The ciphertext is replaced by the original body, exactly.
	if not mt.eom_check(conn, MT_BODYCHANGE) then
		error("the body was not replaced: the message was not decrypted")
	end
	if not mt.eom_check(conn, MT_BODYCHANGE, original_body) then
		error("the body was replaced, but not by the original body")
	end
	-- The result is recorded, naming no recipient (every recipient of
	-- the transaction gets this copy; one may be another's Bcc) ...
	local results = mt.getheader(conn, "Authentication-Results", 0)
	if results == nil then
		error("no Authentication-Results field added")
	end
	if not string.find(results, "; x-ibemail=pass", 1, true)
	   or string.find(results, rcpt, 1, true) then
		error("unexpected Authentication-Results: " .. results)
	end
	if mt.getheader(conn, "Authentication-Results", 1) ~= nil then
		error("more than one Authentication-Results field added")
	end
	-- ... the forged one and the sealed message's outer fields are removed ...
	if not mt.eom_check(conn, MT_HDRDELETE, "Authentication-Results") then
		error("the forged Authentication-Results field was kept")
	end
	if not mt.eom_check(conn, MT_HDRDELETE, "Reply-To") then
		error("the Reply-To field added on the way was kept")
	end
	if not mt.eom_check(conn, MT_HDRDELETE, "Subject") then
		error("the Subject field added on the way was kept")
	end
	if mt.eom_check(conn, MT_HDRCHANGE, "Subject", " Wire the money")
	   or mt.eom_check(conn, MT_HDRADD, "Subject", " Wire the money") then
		error("the Subject added on the way is delivered")
	end
	if not mt.eom_check(conn, MT_HDRDELETE, "Content-Type") then
		error("the outer Content-Type (application/pkcs7-mime) was kept")
	end
	-- ... and the original header fields come back from inside.
	if not mt.eom_check(conn, MT_HDRCHANGE, "Subject", " the merger")
	   and not mt.eom_check(conn, MT_HDRADD, "Subject", " the merger") then
		error("the original Subject was not restored")
	end
	local content_type = mt.getheader(conn, "Content-Type", 0)
	if content_type ~= nil and string.find(content_type, "pkcs7", 1, true) then
		error("the S/MIME Content-Type was added back: " .. content_type)
	end
	if mt.eom_check(conn, MT_QUARANTINE) then
		error("the message was quarantined")
	end

	mt.disconnect(conn)
	mt.echo("decrypt: opened for " .. rcpt .. ", Authentication-Results:" .. results)
end

-- miltertest (2.11) does not print a script's error message: print it
-- here, then fail.
local ok, err = pcall(test)
if not ok then
	io.stderr:write("FAILED: " .. tostring(err) .. "\n")
	error(err, 0)
end
