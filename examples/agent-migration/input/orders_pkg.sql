-- PL/SQL package orders_pkg
create or replace package orders_pkg as end;
